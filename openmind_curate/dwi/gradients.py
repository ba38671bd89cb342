"""Gradient tables: reading, checking, shell selection and b-vector frames.

BIDS stores b-vectors in the FSL convention: on the image's voxel axes, with
the first axis negated when the voxel-to-world affine has a positive
determinant. Inside the pipeline we keep vectors on the voxel axes
("voxel frame"); rotations estimated in world space are mapped into that
frame before they are applied.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from openmind_curate.errors import DataError

B0_THRESHOLD = 50.0  # s/mm^2: volumes at or below are b0s
NORM_TOLERANCE = 0.05


class DwiInputError(DataError):
    """The series cannot be processed; the message says why (the caller adds the file)."""


@dataclass(frozen=True)
class Gradients:
    bvals: np.ndarray  # (n,)
    bvecs: np.ndarray  # (n, 3), voxel frame, unit (zeros for b0)

    @property
    def b0(self) -> np.ndarray:
        return self.bvals <= B0_THRESHOLD

    def shells(self) -> list[float]:
        return shells(self.bvals, self.b0)


def shells(bvals: np.ndarray, b0: np.ndarray) -> list[float]:
    """Distinct non-zero b-values, rounded to 100 s/mm^2."""
    return sorted({float(round(b, -2)) for b in bvals[~b0]})


def read_table(bval_path: str, bvec_path: str) -> tuple[np.ndarray, np.ndarray]:
    """(bvals (n,), bvecs (3, n)) as stored; errors name the file."""
    try:
        bvals = np.loadtxt(bval_path, ndmin=1, dtype=float).ravel()
    except (OSError, ValueError) as exc:
        raise DwiInputError(f"cannot read b-values from {bval_path}: {exc}") from None
    try:
        bvecs = np.loadtxt(bvec_path, ndmin=2, dtype=float)
    except (OSError, ValueError) as exc:
        raise DwiInputError(f"cannot read b-vectors from {bvec_path}: {exc}") from None
    if bvecs.shape[0] != 3 and bvecs.shape[1] == 3:
        bvecs = bvecs.T  # one vector per line: tolerated, common in the wild
    if bvecs.shape[0] != 3:
        raise DwiInputError(f"{bvec_path} must have 3 rows, has shape {bvecs.shape}")
    return bvals, bvecs


def fsl_to_voxel(bvecs_fsl: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """(3, n) FSL-convention vectors -> (n, 3) voxel-frame vectors."""
    out = np.asarray(bvecs_fsl, float).T.copy()
    if np.linalg.det(affine[:3, :3]) > 0:
        out[:, 0] *= -1
    return out


def check(bvals: np.ndarray, bvecs_fsl: np.ndarray, n_volumes: int, affine) -> Gradients:
    """Validate a table against a series and return it in the voxel frame."""
    if len(bvals) != n_volumes or bvecs_fsl.shape[1] != n_volumes:
        raise DwiInputError(
            f"gradient table does not match the series: {len(bvals)} b-values and "
            f"{bvecs_fsl.shape[1]} b-vectors for {n_volumes} volumes"
        )
    if not np.isfinite(bvals).all():
        raise DwiInputError("b-values hold non-finite values")
    if (bvals < 0).any():
        raise DwiInputError("negative b-values")
    b0 = bvals <= B0_THRESHOLD
    # Converters often write NaN vectors for b0 volumes; only weighted ones matter.
    if not np.isfinite(bvecs_fsl[:, ~b0]).all():
        raise DwiInputError("b-vectors of diffusion-weighted volumes hold non-finite values")
    vecs = fsl_to_voxel(np.where(np.isfinite(bvecs_fsl), bvecs_fsl, 0.0), affine)
    if not b0.any():
        raise DwiInputError(f"no b0 volume (no b-value <= {B0_THRESHOLD:g})")
    if b0.all():
        raise DwiInputError("no diffusion-weighted volume (all b-values are b0)")
    norms = np.linalg.norm(vecs[~b0], axis=1)
    bad = np.abs(norms - 1) > NORM_TOLERANCE
    if bad.any():
        i = int(np.flatnonzero(~b0)[np.argmax(bad)])
        raise DwiInputError(
            f"b-vector {i} has length {norms[bad][0]:.3f}, not 1 (tolerance "
            f"{NORM_TOLERANCE}); {int(bad.sum())} such vectors"
        )
    vecs[~b0] /= norms[:, None]
    vecs[b0] = 0.0
    return Gradients(bvals.astype(float), vecs)
