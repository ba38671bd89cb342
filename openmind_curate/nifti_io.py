"""Writing NIfTI files the way every stage needs them: atomically, in mm/s
units, with the sform and qform both set to the affine."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from openmind_curate.jobs.atomic import atomic_path


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
