"""Rigid co-registration of every volume to a b0 reference, with b-vector rotation.

Schedule (paper B.2, made cheap): every b0 is registered to the first b0;
the registered b0s are averaged into the reference; every diffusion-weighted
volume is registered to that mean. SimpleITK's Euler (6-parameter) transform,
Mattes mutual information (DWIs and b0s differ in contrast), two resolution
levels with a random 20% voxel sample, restricted to a head mask. Each volume
is then resampled once, with its own transform, and only if it moved more
than `min_motion` (so a still series is not blurred by interpolation).

Conventions. ITK works in LPS physical space, NIfTI affines in RAS: images go
to ITK with their direction and origin flipped in x and y, and rotations come
back through the same flip. An ITK transform maps reference points to moving
points, i.e. it is the head motion itself; b-vectors are rotated by its
inverse in the voxel frame (`dipy.core.gradients.reorient_bvecs`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from dipy.core.gradients import gradient_table, reorient_bvecs

from openmind_curate.nifti_io import LPS, from_sitk, orthonormal_directions, to_sitk


@dataclass(frozen=True)
class MotionConfig:
    shrink: tuple[int, ...] = (4, 2)
    smoothing_mm: tuple[float, ...] = (4.0, 2.0)
    sampling: float = 0.2
    iterations: int = 100
    bins: int = 32
    min_motion: float = 0.05  # degrees or mm below which a volume is not resampled
    seed: int = 1


@dataclass(frozen=True)
class MotionReport:
    rotations_deg: list[list[float]]  # per volume, about world x, y, z
    translations_mm: list[list[float]]
    max_rotation_deg: float
    max_translation_mm: float
    n_resampled: int


MIN_SIZE = 12  # voxels per axis below which registration is not attempted


def _levels(cfg: MotionConfig, size: int) -> tuple[list[int], list[float]]:
    """The resolution levels that keep at least 8 voxels per axis."""
    keep = [(s, m) for s, m in zip(cfg.shrink, cfg.smoothing_mm, strict=True) if size / s >= 8]
    return [s for s, _ in keep] or [1], [m for _, m in keep] or [0.0]


def _register(fixed, moving, fixed_mask, cfg: MotionConfig) -> sitk.Euler3DTransform:
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=cfg.bins)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(cfg.sampling, cfg.seed)
    if fixed_mask is not None:
        reg.SetMetricFixedMask(fixed_mask)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0,
        minStep=1e-4,
        numberOfIterations=cfg.iterations,
        relaxationFactor=0.6,
        gradientMagnitudeTolerance=1e-6,
    )
    reg.SetOptimizerScalesFromPhysicalShift()
    shrink, smoothing = _levels(cfg, min(fixed.GetSize()))
    reg.SetShrinkFactorsPerLevel(shrink)
    reg.SetSmoothingSigmasPerLevel(smoothing)
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    init = sitk.CenteredTransformInitializer(
        fixed, moving, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.GEOMETRY
    )
    reg.SetInitialTransform(init, inPlace=False)
    return _as_euler(reg.Execute(fixed, moving))


def _as_euler(tx: sitk.Transform) -> sitk.Euler3DTransform:
    if tx.GetName() == "CompositeTransform":
        composite = sitk.CompositeTransform(tx)
        tx = composite.GetNthTransform(composite.GetNumberOfTransforms() - 1)
    return sitk.Euler3DTransform(tx)


def world_rotation(tx: sitk.Euler3DTransform) -> tuple[np.ndarray, np.ndarray]:
    """(3x3 RAS rotation, RAS translation at the rotation centre) of the head motion."""
    r_lps = np.array(tx.GetMatrix()).reshape(3, 3)
    t_lps = np.array(tx.GetTranslation())
    return LPS @ r_lps @ LPS, LPS @ t_lps


def euler_deg(r: np.ndarray) -> list[float]:
    """Rotation angles about x, y, z (R = Rz Ry Rx), degrees."""
    ry = np.arcsin(-np.clip(r[2, 0], -1, 1))
    rx = np.arctan2(r[2, 1], r[2, 2])
    rz = np.arctan2(r[1, 0], r[0, 0])
    return [float(np.degrees(a)) for a in (rx, ry, rz)]


def correct_motion(
    data: np.ndarray,
    affine: np.ndarray,
    is_b0: np.ndarray,
    mask: np.ndarray | None = None,
    cfg: MotionConfig = MotionConfig(),
    threads: int = 1,
) -> tuple[np.ndarray, np.ndarray, MotionReport]:
    """Register and resample every volume; returns (data, voxel-frame rotations
    (n, 3, 3) of each volume's head motion, report)."""
    sitk.ProcessObject_SetGlobalDefaultNumberOfThreads(max(1, threads))
    n = data.shape[3]
    b0_idx = np.flatnonzero(is_b0)
    first = to_sitk(data[..., b0_idx[0]], affine)
    fixed_mask = None
    if mask is not None:
        fixed_mask = sitk.Cast(to_sitk(mask.astype(np.float32), affine), sitk.sitkUInt8)
    transforms: list[sitk.Euler3DTransform | None] = [None] * n
    for i in b0_idx[1:]:
        transforms[i] = _register(first, to_sitk(data[..., i], affine), fixed_mask, cfg)
    b0s = [_resample(data[..., i], affine, first, transforms[i]) for i in b0_idx]
    reference = to_sitk(np.mean(b0s, axis=0), affine)
    for i in np.flatnonzero(~is_b0):
        transforms[i] = _register(reference, to_sitk(data[..., i], affine), fixed_mask, cfg)

    dirs, _ = orthonormal_directions(affine)
    out = np.empty(data.shape, np.float32)
    rot_vox = np.tile(np.eye(3), (n, 1, 1))
    rotations, translations, moved = [], [], 0
    for i in range(n):
        tx = transforms[i]
        if tx is None:
            r_world, t_world = np.eye(3), np.zeros(3)
        else:
            r_world, t_world = world_rotation(tx)
        angles = euler_deg(r_world)
        rotations.append(angles)
        translations.append([float(v) for v in t_world])
        big = max(np.abs(angles).max(), np.abs(t_world).max()) > cfg.min_motion
        if tx is not None and big:
            out[..., i] = _resample(data[..., i], affine, first, tx)
            rot_vox[i] = dirs.T @ r_world @ dirs
            moved += 1
        else:
            out[..., i] = data[..., i]
    report = MotionReport(
        rotations,
        translations,
        float(np.abs(rotations).max()),
        float(np.abs(translations).max()),
        moved,
    )
    return out, rot_vox, report


def _resample(vol, affine, reference: sitk.Image, tx) -> np.ndarray:
    if tx is None:
        return np.asarray(vol, np.float32)
    moving = to_sitk(vol, affine)
    res = sitk.Resample(moving, reference, tx, sitk.sitkBSpline, 0.0, sitk.sitkFloat32)
    return from_sitk(res)


def reorient(bvals: np.ndarray, bvecs: np.ndarray, rot_vox: np.ndarray) -> np.ndarray:
    """Rotate voxel-frame b-vectors by the inverse of each volume's head rotation."""
    gtab = gradient_table(bvals, bvecs=bvecs, b0_threshold=50)
    moved = rot_vox[~gtab.b0s_mask]
    return np.asarray(reorient_bvecs(gtab, np.moveaxis(moved, 0, -1)).bvecs)
