"""The DWI pipeline: 4D series -> T2w (mean b0), FA, MD and a brain mask.

denoise -> Gibbs -> motion -> bias -> mask -> maps (paper B.2), each step
switchable in `DwiConfig`. Pure: arrays in, arrays and reports out; the file
handling lives in `dwi.run`.

Before any step the series is cropped to its head (a loose Otsu foreground,
dilated), which spares every step the empty field of view; results are put
back on the full grid at the end.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from openmind_curate.dwi import gradients as grad
from openmind_curate.dwi.bias import n4_field
from openmind_curate.dwi.denoise import mppca, patch2self_denoise
from openmind_curate.dwi.gibbs import gibbs_removal
from openmind_curate.dwi.maps import MAX_B, tensor_maps
from openmind_curate.dwi.mask import brain_mask, head_mask
from openmind_curate.dwi.motion import MIN_SIZE, MotionConfig, correct_motion, reorient

STEPS = ("denoise", "gibbs", "motion", "bias", "mask", "maps")
MIN_VOLUMES_MPPCA = 8
MAX_NONFINITE = 0.01


@dataclass(frozen=True)
class DwiConfig:
    denoise: str | None = "mppca"  # "mppca", "patch2self" or None
    patch_radius: int = 2
    mppca_stride: int = 2
    gibbs: bool = True
    gibbs_exact: bool = False
    gibbs_shifts: str = "kellner"
    slice_axis: int | None = None  # None: the axis with the largest voxel size
    motion: bool = True
    motion_cfg: MotionConfig = field(default_factory=MotionConfig)
    bias: bool = True
    n4_shrink: int = 2
    crop: bool = True
    threads: int = 1

    def steps(self) -> list[str]:
        on = {
            "denoise": self.denoise is not None,
            "gibbs": self.gibbs,
            "motion": self.motion,
            "bias": self.bias,
            "mask": True,
            "maps": True,
        }
        return [s for s in STEPS if on[s]]


@dataclass
class DwiResult:
    t2w: np.ndarray
    fa: np.ndarray
    md: np.ndarray
    mask: np.ndarray
    bvecs: np.ndarray  # voxel frame, after rotation
    sigma: np.ndarray | None
    seconds: dict[str, float] = field(default_factory=dict)
    reports: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def _crop_box(mask: np.ndarray, margin: int = 4) -> tuple[slice, ...]:
    idx = np.argwhere(mask)
    if not len(idx):
        return tuple(slice(0, s) for s in mask.shape)
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + margin + 1, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


def _shifted(affine: np.ndarray, box: tuple[slice, ...]) -> np.ndarray:
    out = affine.copy()
    out[:3, 3] = affine[:3, :3] @ np.array([s.start for s in box]) + affine[:3, 3]
    return out


def validate_series(data: np.ndarray, bvals, bvecs_fsl, affine) -> grad.Gradients:
    if data.ndim != 4:
        raise grad.DwiInputError(
            f"a DWI series must be 4D; this image is {data.ndim}D with shape {data.shape}"
        )
    gtab = grad.check(bvals, bvecs_fsl, data.shape[3], affine)
    low = (~gtab.b0) & (gtab.bvals <= MAX_B)
    if low.sum() < 6:
        raise grad.DwiInputError(
            f"{int(low.sum())} diffusion-weighted volumes with b <= {MAX_B:g}; "
            "a tensor fit needs at least 6"
        )
    return gtab


def run_pipeline(
    data: np.ndarray,
    affine: np.ndarray,
    bvals: np.ndarray,
    bvecs_fsl: np.ndarray,
    config: DwiConfig = DwiConfig(),
) -> DwiResult:
    """Process one series. Raises `DwiInputError` for input it cannot use."""
    gtab = validate_series(data, bvals, bvecs_fsl, affine)
    warnings: list[str] = []
    seconds: dict[str, float] = {}
    reports: dict[str, Any] = {}
    data = np.asarray(data, np.float32)
    finite = np.isfinite(data)
    if not finite.all():
        frac = 1 - finite.mean()
        if frac > MAX_NONFINITE:
            raise grad.DwiInputError(f"{frac:.1%} of the voxels are NaN or infinite")
        data = np.where(finite, data, 0).astype(np.float32)
        warnings.append(f"{int((~finite).sum())} non-finite voxels set to 0")
    if gtab.shells() and max(gtab.shells()) > MAX_B:
        warnings.append(
            f"multi-shell series (b = {', '.join(f'{b:g}' for b in gtab.shells())}): "
            f"the tensor is fit on b <= {MAX_B:g} only"
        )
    if config.denoise == "mppca" and data.shape[3] < MIN_VOLUMES_MPPCA:
        raise grad.DwiInputError(
            f"series too short for MP-PCA: {data.shape[3]} volumes, needs at least "
            f"{MIN_VOLUMES_MPPCA} (run without denoising)"
        )
    full_shape = data.shape[:3]
    mean_b0 = data[..., gtab.b0].mean(axis=3)
    head = head_mask(mean_b0)
    box = _crop_box(head) if config.crop else tuple(slice(0, s) for s in full_shape)
    data = np.ascontiguousarray(data[box])
    head = head[box]
    aff = _shifted(affine, box)
    bvecs = gtab.bvecs
    sigma = None

    def timed(step: str, fn, *args, **kwargs):
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        seconds[step] = round(time.perf_counter() - start, 3)
        return out

    if config.denoise == "mppca":
        data, sigma, rep = timed(
            "denoise", mppca, data, head, config.patch_radius, config.mppca_stride, config.threads
        )
        reports["denoise"] = asdict(rep)
    elif config.denoise == "patch2self":
        data, rep = timed("denoise", patch2self_denoise, data, gtab.bvals)
        reports["denoise"] = asdict(rep)
    if config.gibbs:
        zooms = np.sqrt((affine[:3, :3] ** 2).sum(0))
        axis = config.slice_axis
        if axis is None:
            axis = int(np.argmax(zooms)) if zooms.max() - zooms.min() > 1e-3 else 2
        data, rep = timed(
            "gibbs",
            gibbs_removal,
            data,
            axis,
            threads=config.threads,
            exact=config.gibbs_exact,
            shifts=config.gibbs_shifts,
        )
        reports["gibbs"] = asdict(rep)
    motion = config.motion
    if motion and min(data.shape[:3]) < MIN_SIZE:
        warnings.append(
            f"series too small to register ({data.shape[:3]}); motion correction skipped"
        )
        motion = False
    if motion:
        data, rot, rep = timed(
            "motion", correct_motion, data, aff, gtab.b0, head, config.motion_cfg, config.threads
        )
        bvecs = reorient(gtab.bvals, bvecs, rot)
        reports["motion"] = asdict(rep)
    mean_b0 = data[..., gtab.b0].mean(axis=3)
    if config.bias:
        start = time.perf_counter()
        provisional = brain_mask(mean_b0)
        field_map, rep = n4_field(mean_b0, aff, provisional, config.n4_shrink, config.threads)
        data /= field_map[..., None]
        mean_b0 = mean_b0 / field_map
        seconds["bias"] = round(time.perf_counter() - start, 3)
        reports["bias"] = asdict(rep)
    mask = timed("mask", brain_mask, mean_b0)
    reports["mask"] = {"voxels": int(mask.sum())}
    fa, md, rep = timed("maps", tensor_maps, data, gtab.bvals, bvecs, mask, gtab.b0)
    reports["maps"] = asdict(rep)
    t2w = np.where(mask, mean_b0, 0).astype(np.float32)

    def full(arr: np.ndarray, dtype) -> np.ndarray:
        out = np.zeros(full_shape, dtype)
        out[box] = arr
        return out

    return DwiResult(
        t2w=full(t2w, np.float32),
        fa=full(fa, np.float32),
        md=full(md, np.float32),
        mask=full(mask, np.uint8),
        bvecs=bvecs,
        sigma=None if sigma is None else full(sigma, np.float32),
        seconds=seconds,
        reports=reports,
        warnings=warnings,
    )
