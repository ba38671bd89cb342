"""NIfTI reading and writing the way every stage needs it (atomic writes, mm/s
units, sform and qform both set, clear read errors), and the one conversion
between numpy volumes with a RAS affine and SimpleITK images (LPS)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from openmind_curate.atomic import atomic_path
from openmind_curate.errors import DataError


def save_nifti(
    data: np.ndarray,
    affine: np.ndarray,
    path: str | Path,
    dtype: str | None = None,
    slope: float = 1.0,
) -> None:
    """Save `data`; with `dtype`, store exactly that type with `slope` as scl_slope."""
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    if dtype is not None:
        img.header.set_data_dtype(dtype)
        img.header.set_slope_inter(slope, 0.0)
    with atomic_path(path) as tmp:
        nib.save(img, tmp)


class NiftiReadError(DataError):
    """A NIfTI file that cannot be read; the message names the file."""


def load_nifti(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The data (float32) and affine of `path`; a clear error for a bad file."""
    try:
        img = nib.load(str(path))
        # NIfTI stores Fortran order. Converting to float32 and to C order in
        # one pass keeps every later reshape (block means, flattening) a view.
        proxy = img.dataobj
        slope = getattr(proxy, "slope", 1.0)
        inter = getattr(proxy, "inter", 0.0)
        raw = proxy.get_unscaled() if hasattr(proxy, "get_unscaled") else np.asanyarray(proxy)
        data = np.array(raw, dtype=np.float32, order="C")
        if slope != 1.0 or inter != 0.0:
            data *= np.float32(slope)
            data += np.float32(inter)
    except Exception as exc:  # noqa: BLE001 - every read failure reads the same to a user
        raise NiftiReadError(f"cannot read {path}: {type(exc).__name__}: {exc}") from None
    if data.ndim < 3 or data.size == 0:
        raise NiftiReadError(f"cannot read {path}: shape {data.shape} is not a 3D/4D image")
    if data.ndim > 4:
        data = data.reshape(*data.shape[:4], -1)[..., 0]
    return data, img.affine


#: RAS <-> LPS (ITK's frame): flip x and y.
LPS = np.diag([-1.0, -1.0, 1.0])


def orthonormal_directions(affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The affine's unit column directions and its voxel sizes."""
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(0))
    return affine[:3, :3] / zooms, zooms


def to_sitk(vol: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """A 3D numpy volume (i, j, k) with a RAS affine -> an ITK image in LPS."""
    img = sitk.GetImageFromArray(np.ascontiguousarray(vol.T, dtype=np.float32))
    dirs, zooms = orthonormal_directions(affine)
    img.SetSpacing([float(z) for z in zooms])
    img.SetOrigin([float(v) for v in LPS @ affine[:3, 3]])
    img.SetDirection([float(v) for v in (LPS @ dirs).ravel()])
    return img


def from_sitk(img: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(img).T
