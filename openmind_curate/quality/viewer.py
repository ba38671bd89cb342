"""What the rater app shows: a unit's volumes, prepared for the browser viewer.

Pure functions plus a small cache, so the app only draws. `load_unit` reads
a unit's files once (the file bytes give the checksum stored with a rating),
reorients each volume to the closest canonical RAS grid, precomputes the
intensity percentiles the window presets use and encodes the volumes for the
browser (`encode_unit`: 16-bit codes, zlib): the rater app's panel
(``apps/rater_panel.js``) slices, windows and zooms them in the page, so a
slider step never reaches the server. `slices` cuts the same three views in
Python (the reference the browser's slicing is tested against, and the
server-side benchmark). `UnitCache` keeps the last few units and loads the
next one in a background thread while the rater scores the current one.

Display convention (neurological, as nilearn and MRIQC reports): every view
is upright (superior, or anterior for the axial view, at the top); coronal
and axial views have the subject's left on the image's left; the sagittal
view has the nose on the left. Pixels are square in millimetres: a view of
an anisotropic volume is resampled (bilinear, 2D only) to the finest spacing.
"""

from __future__ import annotations

import json
import struct
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from PIL import Image

from openmind_curate.errors import DataError
from openmind_curate.quality.plan import unit_checksum, unit_images

#: Window presets, named by what they show: name -> (low, high) percentile of the
#: finite nonzero voxels. "Background noise" puts the darkest third (air, and the
#: noise in it) on the whole grey scale, where noise is easiest to judge.
PRESETS: dict[str, tuple[float, float]] = {
    "Tissue": (1.0, 99.0),
    "High contrast": (5.0, 95.0),
    "Background noise": (0.0, 30.0),
    "Full range": (0.0, 100.0),
}
PRESET_HELP = {
    "Tissue": "percentiles 1-99 of the nonzero voxels: the usual view",
    "High contrast": "percentiles 5-95: grey/white contrast, blur at edges",
    "Background noise": "percentiles 0-30: the air around the head, where noise shows",
    "Full range": "minimum to maximum: bright spikes and clipping",
}
DEFAULT_PRESET = "Tissue"
VIEWS = ("sagittal", "coronal", "axial")
_PERCENTILES = sorted({p for pair in PRESETS.values() for p in pair})
_SAMPLE_VOXELS = 2_000_000  # percentiles from a strided subsample above this size


class ViewerError(DataError):
    """A unit that cannot be shown (not in the index, a file that cannot be read)."""


@dataclass(frozen=True, eq=False)
class Volume:
    """One volume of a unit, on its closest canonical (RAS) voxel grid."""

    label: str  # modality: T1w, ... or FA / MD / T2w for a DWI unit's maps
    data: np.ndarray  # float32, axes x (left->right), y (posterior->anterior), z (inf->sup)
    spacing: tuple[float, float, float]  # mm along x, y, z
    percentiles: dict[float, float]  # of the finite nonzero voxels

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.data.shape)  # type: ignore[return-value]

    @property
    def center(self) -> tuple[int, int, int]:
        return tuple(n // 2 for n in self.shape)  # type: ignore[return-value]


@dataclass(frozen=True, eq=False)
class Unit:
    unit_id: str
    volumes: list[Volume]
    checksum: str  # sha256 of the files' bytes, in the order shown
    files: tuple[str, ...] = field(default=())
    #: the volumes as the browser viewer gets them (`encode_unit`), made once per load
    encoded: tuple[list[dict], bytes] | None = field(default=None, repr=False)

    @property
    def labels(self) -> list[str]:
        return [v.label for v in self.volumes]


def _percentiles(data: np.ndarray) -> dict[float, float]:
    step = max(1, int(np.ceil((data.size / _SAMPLE_VOXELS) ** (1 / 3))))
    sample = data[::step, ::step, ::step].ravel()
    sample = sample[np.isfinite(sample) & (sample != 0)]
    if sample.size == 0:  # an all-zero (or all-NaN) volume
        return dict.fromkeys(_PERCENTILES, 0.0)
    values = np.percentile(sample, _PERCENTILES)
    out = {p: float(v) for p, v in zip(_PERCENTILES, values, strict=True)}
    out[0.0], out[100.0] = float(data.min()), float(data.max())  # exact (data has no NaN)
    return out


def load_volume(path: str | Path, label: str = "") -> tuple[Volume, bytes]:
    """A file as a canonical float32 volume (4D and up: the first volume), and its bytes."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        img = nib.load(str(path))
        if len(img.shape) > 3:  # a unit is 3D; a 4D file shows its first volume
            img = img.slicer[(slice(None),) * 3 + (0,) * (len(img.shape) - 3)]
        if len(img.shape) != 3 or 0 in img.shape:
            raise ValueError(f"shape {img.shape} is not a 3D image")
        img = nib.as_closest_canonical(img)
        data = np.asarray(img.get_fdata(dtype=np.float32), dtype=np.float32)
    except Exception as exc:  # noqa: BLE001 - every read failure reads the same to a rater
        raise ViewerError(f"cannot show {path.name}: {type(exc).__name__}: {exc}") from None
    data = np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0)
    spacing = np.sqrt((img.affine[:3, :3] ** 2).sum(axis=0))
    spacing = tuple(float(s) if s > 0 else 1.0 for s in spacing)
    return Volume(label, data, spacing, _percentiles(data)), raw  # type: ignore[arg-type]


def load_unit(index_df: pd.DataFrame, unit_id: str) -> Unit:
    """The volumes a unit shows (one image, or a DWI's FA, MD and T2w maps) and
    the sha256 of their files' bytes in that order. Paths come from the index only."""
    rows = unit_images(index_df, unit_id)
    if rows.empty:
        raise ViewerError(f"unit {unit_id} is not in the index")
    volumes, raws, files = [], [], []
    for row in rows.itertuples():
        path = Path(row.root) / row.path
        volume, raw = load_volume(path, str(row.modality))
        volumes.append(volume)
        raws.append(raw)
        files.append(str(path))
    unit = Unit(unit_id, volumes, unit_checksum(raws), tuple(files))
    return replace(unit, encoded=encode_unit(unit))  # in the prefetch thread, not on Save


def window(volume_stats: Volume | Mapping[float, float], preset: str) -> tuple[float, float]:
    """(level, width) of a preset, from a volume's precomputed percentiles."""
    stats = volume_stats.percentiles if isinstance(volume_stats, Volume) else volume_stats
    if preset not in PRESETS:
        raise ValueError(f"unknown window preset {preset!r}; choose from {list(PRESETS)}")
    lo, hi = (float(stats[p]) for p in PRESETS[preset])
    width = hi - lo
    if not np.isfinite(width) or width <= 0:
        width = max(abs(hi), 1.0) * 1e-3 if np.isfinite(hi) else 1.0
    return (lo + hi) / 2, width


def to_uint8(plane: np.ndarray, level: float, width: float) -> np.ndarray:
    """Window a 2D plane: level - width/2 -> 0, level + width/2 -> 255."""
    width = width if width > 0 else 1e-6
    low = level - width / 2
    scaled = (plane.astype(np.float32, copy=False) - np.float32(low)) * np.float32(255.0 / width)
    return np.clip(scaled, 0, 255, out=scaled).astype(np.uint8)


def _square_pixels(img: np.ndarray, row_mm: float, col_mm: float, finest: float) -> np.ndarray:
    rows = max(1, round(img.shape[0] * row_mm / finest))
    cols = max(1, round(img.shape[1] * col_mm / finest))
    if (rows, cols) == img.shape:
        return img
    return np.asarray(Image.fromarray(img).resize((cols, rows), Image.BILINEAR))


def planes(data: np.ndarray, ijk: tuple[int, int, int]) -> tuple[np.ndarray, ...]:
    """The three raw planes through voxel ijk of a canonical volume, display-oriented:
    sagittal (rows sup->inf, cols ant->post), coronal (rows sup->inf, cols left->right),
    axial (rows ant->post, cols left->right)."""
    i, j, k = (int(np.clip(c, 0, n - 1)) for c, n in zip(ijk, data.shape, strict=True))
    sagittal = data[i, :, :].T[::-1, ::-1]
    coronal = data[:, j, :].T[::-1, :]
    axial = data[:, :, k].T[::-1, :]
    return sagittal, coronal, axial


def slices(
    unit_volume: Volume | np.ndarray,
    ijk: tuple[int, int, int],
    level: float,
    width: float,
    spacing: tuple[float, float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sagittal, coronal and axial uint8 images through voxel ijk (x, y, z of the
    canonical grid), windowed by level/width, with square pixels in mm."""
    if isinstance(unit_volume, Volume):
        data, spacing = unit_volume.data, spacing or unit_volume.spacing
    else:
        data, spacing = unit_volume, spacing or (1.0, 1.0, 1.0)
    sx, sy, sz = spacing
    finest = min(spacing)
    sag, cor, ax = (to_uint8(p, level, width) for p in planes(data, ijk))
    return (
        _square_pixels(sag, sz, sy, finest),
        _square_pixels(cor, sz, sx, finest),
        _square_pixels(ax, sy, sx, finest),
    )


def encode_volume(volume: Volume) -> tuple[dict, bytes]:
    """A volume for the browser viewer: uint16 codes over [min, max] of the data
    (x fastest), zlib-compressed, and the metadata that maps codes back to values.

    Integer-valued volumes with a range under 65536 (most scanners' int16) are
    sent exactly; others keep a window as narrow as 1/65535 of their range free
    of banding. The browser can then window and level without the server.
    """
    data = volume.data
    lo, hi = float(data.min()), float(data.max())
    if hi - lo <= 65535 and np.array_equal(data, np.rint(data)):
        step = 1.0  # integer voxels (most scanners' int16): the codes are exact
    else:
        step = (hi - lo) / 65535.0 if hi > lo else 1.0
    codes = np.rint((data - np.float32(lo)) / np.float32(step)).astype("<u2")
    packed = zlib.compress(np.asfortranarray(codes).tobytes(order="F"), 1)
    windows = {name: _window_bounds(volume, name) for name in PRESETS}
    meta = dict(
        label=volume.label,
        shape=list(volume.shape),
        spacing=[round(s, 6) for s in volume.spacing],
        lo=lo,  # the value of code 0 (and the minimum)
        step=step,  # value per code
        hi=hi,  # the maximum
        windows=windows,
    )
    return meta, packed


def _window_bounds(volume: Volume, preset: str) -> list[float]:
    level, width = window(volume, preset)
    return [level - width / 2, level + width / 2]


def encode_unit(unit: Unit) -> tuple[list[dict], bytes]:
    """Every volume of a unit, encoded: their metadata (with each volume's byte
    offset and length in the body) and the concatenated body."""
    metas, parts, offset = [], [], 0
    for volume in unit.volumes:
        meta, packed = encode_volume(volume)
        metas.append({**meta, "offset": offset, "nbytes": len(packed)})
        parts.append(packed)
        offset += len(packed)
    return metas, b"".join(parts)


def pack_payload(header: dict, body: bytes = b"") -> bytes:
    """One binary message: little-endian uint32 header length, JSON header, body."""
    text = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    return struct.pack("<I", len(text)) + text + body


def unpack_payload(payload: bytes) -> tuple[dict, bytes]:
    """The inverse of `pack_payload` (what the browser does; used by the tests)."""
    (n,) = struct.unpack_from("<I", payload)
    return json.loads(payload[4 : 4 + n]), payload[4 + n :]


def decode_volume(meta: dict, body: bytes) -> np.ndarray:
    """The values the browser sees for one encoded volume (x, y, z order)."""
    raw = zlib.decompress(body[meta["offset"] : meta["offset"] + meta["nbytes"]])
    codes = np.frombuffer(raw, dtype="<u2").reshape(meta["shape"], order="F")
    return (meta["lo"] + codes.astype(np.float64) * meta["step"]).astype(np.float32)


class UnitCache:
    """The last `maxsize` units, loaded once each; `prefetch` loads in the background.

    Thread-safe: a unit requested while its load runs waits for that load
    rather than starting another. A failed load is not kept (a retry reads again).
    """

    def __init__(
        self,
        index_df: pd.DataFrame | None = None,
        maxsize: int = 4,
        *,
        loader: Callable[[str], Unit] | None = None,
        workers: int = 1,
    ):
        if loader is None:
            if index_df is None:
                raise ValueError("UnitCache needs an index frame or a loader")
            frame = index_df

            def loader(unit_id: str) -> Unit:
                return load_unit(frame, unit_id)

        self._loader = loader
        self._maxsize = max(1, maxsize)
        self._lock = threading.Lock()
        self._futures: OrderedDict[str, Future[Unit]] = OrderedDict()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="unit-prefetch")

    def _future(self, unit_id: str, delay: float = 0.0) -> Future[Unit]:
        with self._lock:
            fut = self._futures.get(unit_id)
            if fut is None:
                fut = self._pool.submit(self._load, unit_id, delay)
                self._futures[unit_id] = fut
            self._futures.move_to_end(unit_id)
            while len(self._futures) > self._maxsize:
                self._futures.popitem(last=False)
            return fut

    def _load(self, unit_id: str, delay: float) -> Unit:
        if delay > 0:
            time.sleep(delay)
        return self._loader(unit_id)

    def prefetch(self, unit_id: str | None, delay: float = 0.0) -> None:
        """Start loading `unit_id` in the background (nothing if cached or None),
        after `delay` seconds (so that it does not compete with drawing the current one)."""
        if unit_id is not None:
            self._future(unit_id, delay)

    def get(self, unit_id: str, timeout: float | None = None) -> Unit:
        """The unit, waiting for a pending load; raises the load's error."""
        fut = self._future(unit_id)
        try:
            return fut.result(timeout=timeout)
        except BaseException:
            with self._lock:
                if self._futures.get(unit_id) is fut and fut.done():
                    del self._futures[unit_id]
            raise

    def loaded(self, unit_id: str) -> bool:
        """Whether `unit_id` is loaded (or failed): `get` would not wait."""
        with self._lock:
            fut = self._futures.get(unit_id)
        return fut is not None and fut.done()

    def __contains__(self, unit_id: str) -> bool:
        with self._lock:
            return unit_id in self._futures

    def clear(self) -> None:
        with self._lock:
            self._futures.clear()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
