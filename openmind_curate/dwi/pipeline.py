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


@dataclass
class _Series:
    """One series on its way through the steps: the working (head-cropped)
    data and gradient directions, and what the steps report."""

    data: np.ndarray
    bvecs: np.ndarray
    sigma: np.ndarray | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    reports: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def timed(self, step: str, fn, *args, **kwargs):
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        self.seconds[step] = round(time.perf_counter() - start, 3)
        return out


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
    data = _finite(np.asarray(data, np.float32), warnings)
    _check_steps(gtab, data.shape[3], config, warnings)
    full_shape = data.shape[:3]
    head = head_mask(data[..., gtab.b0].mean(axis=3))
    box = _crop_box(head) if config.crop else tuple(slice(0, s) for s in full_shape)
    series = _Series(np.ascontiguousarray(data[box]), gtab.bvecs, warnings=warnings)
    head = head[box]
    aff = _shifted(affine, box)
    _denoise(series, gtab, head, config)
    if config.gibbs:
        _gibbs(series, affine, config)
    _motion(series, gtab, aff, head, config)
    mean_b0 = series.data[..., gtab.b0].mean(axis=3)
    if config.bias:
        mean_b0 = _bias(series, mean_b0, aff, config)
    mask = series.timed("mask", brain_mask, mean_b0)
    series.reports["mask"] = {"voxels": int(mask.sum())}
    fa, md, rep = series.timed(
        "maps", tensor_maps, series.data, gtab.bvals, series.bvecs, mask, gtab.b0
    )
    series.reports["maps"] = asdict(rep)
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
        bvecs=series.bvecs,
        sigma=None if series.sigma is None else full(series.sigma, np.float32),
        seconds=series.seconds,
        reports=series.reports,
        warnings=series.warnings,
    )


def _finite(data: np.ndarray, warnings: list[str]) -> np.ndarray:
    """Non-finite voxels set to 0 (with a warning); too many is an input error."""
    finite = np.isfinite(data)
    if finite.all():
        return data
    frac = 1 - finite.mean()
    if frac > MAX_NONFINITE:
        raise grad.DwiInputError(f"{frac:.1%} of the voxels are NaN or infinite")
    warnings.append(f"{int((~finite).sum())} non-finite voxels set to 0")
    return np.where(finite, data, 0).astype(np.float32)


def _check_steps(
    gtab: grad.Gradients, n_volumes: int, config: DwiConfig, warnings: list[str]
) -> None:
    """Warn that the tensor ignores high shells; refuse MP-PCA on a short series."""
    if gtab.shells() and max(gtab.shells()) > MAX_B:
        warnings.append(
            f"multi-shell series (b = {', '.join(f'{b:g}' for b in gtab.shells())}): "
            f"the tensor is fit on b <= {MAX_B:g} only"
        )
    if config.denoise == "mppca" and n_volumes < MIN_VOLUMES_MPPCA:
        raise grad.DwiInputError(
            f"series too short for MP-PCA: {n_volumes} volumes, needs at least "
            f"{MIN_VOLUMES_MPPCA} (run without denoising)"
        )


def _denoise(series: _Series, gtab: grad.Gradients, head: np.ndarray, config: DwiConfig) -> None:
    if config.denoise == "mppca":
        series.data, series.sigma, rep = series.timed(
            "denoise",
            mppca,
            series.data,
            head,
            config.patch_radius,
            config.mppca_stride,
            config.threads,
        )
        series.reports["denoise"] = asdict(rep)
    elif config.denoise == "patch2self":
        series.data, rep = series.timed("denoise", patch2self_denoise, series.data, gtab.bvals)
        series.reports["denoise"] = asdict(rep)


def _gibbs(series: _Series, affine: np.ndarray, config: DwiConfig) -> None:
    """Gibbs removal along the slice axis (the coarsest one unless configured)."""
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(0))
    axis = config.slice_axis
    if axis is None:
        axis = int(np.argmax(zooms)) if zooms.max() - zooms.min() > 1e-3 else 2
    series.data, rep = series.timed(
        "gibbs",
        gibbs_removal,
        series.data,
        axis,
        threads=config.threads,
        exact=config.gibbs_exact,
        shifts=config.gibbs_shifts,
    )
    series.reports["gibbs"] = asdict(rep)


def _motion(
    series: _Series, gtab: grad.Gradients, aff: np.ndarray, head: np.ndarray, config: DwiConfig
) -> None:
    """Motion correction, and the b-vectors rotated with the volumes; skipped
    (with a warning) on a series too small to register."""
    if not config.motion:
        return
    if min(series.data.shape[:3]) < MIN_SIZE:
        series.warnings.append(
            f"series too small to register ({series.data.shape[:3]}); motion correction skipped"
        )
        return
    series.data, rot, rep = series.timed(
        "motion",
        correct_motion,
        series.data,
        aff,
        gtab.b0,
        head,
        config.motion_cfg,
        config.threads,
    )
    series.bvecs = reorient(gtab.bvals, series.bvecs, rot)
    series.reports["motion"] = asdict(rep)


def _bias(series: _Series, mean_b0: np.ndarray, aff: np.ndarray, config: DwiConfig) -> np.ndarray:
    """N4 bias field of the mean b0 (under a provisional mask), divided out of
    every volume; returns the corrected mean b0."""
    start = time.perf_counter()
    provisional = brain_mask(mean_b0)
    field_map, rep = n4_field(mean_b0, aff, provisional, config.n4_shrink, config.threads)
    series.data /= field_map[..., None]
    mean_b0 = mean_b0 / field_map
    series.seconds["bias"] = round(time.perf_counter() - start, 3)
    series.reports["bias"] = asdict(rep)
    return mean_b0
