"""NIfTI header facts without loading the data.

For ``.nii.gz`` only the first compressed block is inflated (enough for the
348- or 540-byte header), and the gzip trailer's ISIZE field (uncompressed
length mod 2^32) is compared with what the header promises. A truncated file
fails that check at the cost of one 4-byte read; only when it fails (or the
file is multi-member gzip) is the whole stream inflated to decide. For
``.nii`` the file size is compared instead.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass, field
from math import prod

_DTYPES = {
    2: "uint8",
    4: "int16",
    8: "int32",
    16: "float32",
    32: "complex64",
    64: "float64",
    128: "rgb24",
    256: "int8",
    512: "uint16",
    768: "uint32",
    1024: "int64",
    1280: "uint64",
    1536: "float128",
    1792: "complex128",
    2048: "complex256",
    2304: "rgba32",
}
_BITS = {"rgb24": 24, "rgba32": 32}


@dataclass
class HeaderInfo:
    status: str  # ok, empty, corrupt, missing, unreadable
    message: str | None = None
    shape: list[int] | None = None
    spacing: list[float] | None = None
    n_volumes: int | None = None
    dtype: str | None = None
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class _Fields:
    dim: tuple[int, ...]
    datatype: int
    bitpix: int
    pixdim: tuple[float, ...]
    vox_offset: float


#: (struct format, byte offset) of dim, datatype, bitpix, pixdim and
#: vox_offset in each header version, from the NIfTI-1 and NIfTI-2 specifications.
_NIFTI1 = (("8h", 40), ("h", 70), ("h", 72), ("8f", 76), ("f", 108))
_NIFTI2 = (("8q", 16), ("h", 12), ("h", 14), ("8d", 104), ("q", 168))


def _unpack(raw: bytes, order: str, layout: tuple[tuple[str, int], ...]) -> _Fields:
    dim, datatype, bitpix, pixdim, vox_offset = (
        struct.unpack_from(order + fmt, raw, at) for fmt, at in layout
    )
    return _Fields(dim, datatype[0], bitpix[0], pixdim, float(vox_offset[0]))


def _parse(raw: bytes) -> _Fields | str:
    """The fields we need, from a NIfTI-1 or NIfTI-2 header of either byte order
    (struct offsets from the NIfTI-1/2 specifications), or an error message."""
    if len(raw) < 348:
        return f"header is {len(raw)} bytes, NIfTI needs 348"
    for order in "<>":
        size = struct.unpack_from(order + "i", raw, 0)[0]
        if size == 348:
            magic = raw[344:348]
            if magic[:3] not in (b"n+1", b"ni1"):
                return f"bad magic {magic!r}"
            return _unpack(raw, order, _NIFTI1)
        if size == 540:
            if len(raw) < 540:
                return f"NIfTI-2 header is {len(raw)} bytes, needs 540"
            magic = raw[4:12]
            if magic[:3] not in (b"n+2", b"ni2"):
                return f"bad magic {magic!r}"
            return _unpack(raw, order, _NIFTI2)
    return "not a NIfTI-1 or NIfTI-2 header (bad sizeof_hdr)"


def _facts(hdr: _Fields) -> tuple[HeaderInfo, int]:
    dim = list(hdr.dim)
    ndim = dim[0]
    if not 1 <= ndim <= 7 or any(d < 1 for d in dim[1 : ndim + 1]):
        return HeaderInfo("corrupt", f"implausible dim field {dim}"), 0
    shape = dim[1 : ndim + 1]
    dtype = _DTYPES.get(hdr.datatype, f"code{hdr.datatype}")
    bitpix = hdr.bitpix or _BITS.get(dtype, 0)
    nbytes = prod(shape) * bitpix // 8
    n_volumes = prod(shape[3:]) if ndim > 3 else 1
    spacing = [round(abs(p), 6) for p in hdr.pixdim[1 : 1 + min(ndim, 3)]]
    info = HeaderInfo("ok", shape=shape, spacing=spacing, n_volumes=n_volumes, dtype=dtype)
    return info, int(hdr.vox_offset) + nbytes


def read_header(path: str | os.PathLike[str], size: int | None = None) -> HeaderInfo:
    """Header facts and a status; never raises for a bad file."""
    path = os.fspath(path)
    try:
        if size is None:
            size = os.stat(path).st_size
        if size == 0:
            return HeaderInfo("empty", "file is empty (0 bytes)")
        with open(path, "rb") as fh:
            if path.endswith(".gz"):
                return _read_gz(fh, size)
            return _read_plain(fh, size)
    except FileNotFoundError:
        if os.path.islink(path):
            return HeaderInfo("missing", "broken symbolic link (annexed file not fetched?)")
        return HeaderInfo("missing", "file not found")
    except PermissionError as exc:
        return HeaderInfo("unreadable", f"permission denied: {exc.strerror}")
    except OSError as exc:
        return HeaderInfo("unreadable", f"{type(exc).__name__}: {exc}")


def _read_plain(fh, size: int) -> HeaderInfo:
    parsed = _parse(fh.read(540))
    if isinstance(parsed, str):
        return HeaderInfo("corrupt", parsed)
    info, expected = _facts(parsed)
    if info.status == "ok" and size < expected:
        info.status = "corrupt"
        info.message = f"truncated: {size} bytes on disk, header promises {expected}"
    return info


def _read_gz(fh, size: int) -> HeaderInfo:
    if size < 18:
        return HeaderInfo("corrupt", f"{size} bytes: too small to be gzip-compressed")
    chunk = fh.read(1024)
    if chunk[:2] != b"\x1f\x8b":
        return HeaderInfo("corrupt", f"not gzip-compressed (starts with {chunk[:2]!r})")
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    raw = b""
    try:
        while chunk and len(raw) < 540:
            raw += inflater.decompress(chunk, 540 - len(raw))
            while inflater.unconsumed_tail and len(raw) < 540:
                raw += inflater.decompress(inflater.unconsumed_tail, 540 - len(raw))
            if inflater.eof or len(raw) >= 540:
                break
            chunk = fh.read(4096)
    except zlib.error as exc:
        return HeaderInfo("corrupt", f"not a valid gzip stream: {exc}")
    parsed = _parse(raw)
    if isinstance(parsed, str):
        if len(raw) < 348:
            return HeaderInfo("corrupt", f"truncated gzip: {parsed}")
        return HeaderInfo("corrupt", parsed)
    info, expected = _facts(parsed)
    if info.status != "ok":
        return info
    fh.seek(size - 4)
    isize = int.from_bytes(fh.read(4), "little")
    if isize != expected % 2**32:
        problem = _inflate_all(fh, expected)
        if problem:
            info.status, info.message = "corrupt", problem
    return info


def _inflate_all(fh, expected: int) -> str | None:
    """Slow path: inflate every member to tell truncation from multi-member gzip."""
    fh.seek(0)
    total = 0
    data = fh.read()
    try:
        while data:
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            total += len(inflater.decompress(data))
            if not inflater.eof:
                if total >= expected:
                    return "truncated gzip: the image data is complete but the trailer is cut off"
                return f"truncated gzip: stream ends after {total} of {expected} bytes"
            data = inflater.unused_data
    except zlib.error as exc:
        return f"corrupt gzip data: {exc}"
    if total < expected:
        return f"truncated: {total} bytes of image, header promises {expected}"
    return None
