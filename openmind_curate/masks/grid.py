"""A coarse working grid: block means down, nearest-neighbour repeat back up.

Masks and metrics make their decisions at about 4 mm, where a 1 mm
256x256x176 head has 64x64x44 voxels and every morphology step is cheap; only
the final boundary is set at full resolution.
"""

from __future__ import annotations

import numpy as np


def factors_for(spacing: tuple[float, ...], target_mm: float) -> tuple[int, int, int]:
    """Integer block sizes that bring each axis' spacing close to `target_mm`."""
    return tuple(max(1, int(round(target_mm / s))) for s in spacing[:3])  # type: ignore[return-value]


def block_mean(data: np.ndarray, factors: tuple[int, int, int]) -> np.ndarray:
    """Mean over blocks of `factors`; the last partial block is padded by edge values."""
    if data.dtype == bool:
        data = data.view(np.uint8)  # the mean accumulates in float32 without a copy
    pad = [(0, -n % f) for n, f in zip(data.shape, factors, strict=True)]
    if any(p for _, p in pad):
        data = np.pad(data, pad, mode="edge")
    (a, b, c), (fa, fb, fc) = data.shape, factors
    # Outer axis first: each step adds whole contiguous slabs, which is about
    # four times faster than one mean over axes (1, 3, 5).
    x = data.reshape(a // fa, fa, b, c).sum(1, dtype=np.float32)
    x = x.reshape(a // fa, b // fb, fb, c).sum(2)
    x = x.reshape(a // fa, b // fb, c // fc, fc).sum(3)
    return x / np.float32(fa * fb * fc)


def upsample(low: np.ndarray, factors: tuple[int, int, int], shape: tuple[int, ...]) -> np.ndarray:
    """Repeat each coarse voxel over its block and crop to `shape`."""
    out = low
    for axis, f in enumerate(factors):
        if f > 1:
            out = np.repeat(out, f, axis=axis)
    return out[: shape[0], : shape[1], : shape[2]]


def low_affine(affine: np.ndarray, factors: tuple[int, int, int]) -> np.ndarray:
    """The affine of the block grid (voxel centres at the block centres)."""
    f = np.asarray(factors, float)
    out = affine.copy()
    out[:3, :3] = affine[:3, :3] * f
    out[:3, 3] = affine[:3, 3] + affine[:3, :3] @ ((f - 1) / 2)
    return out


def upsample_linear(
    low: np.ndarray, factors: tuple[int, int, int], shape: tuple[int, ...]
) -> np.ndarray:
    """Separable linear interpolation from block centres to every voxel."""
    out = low.astype(np.float32)
    for axis, (f, n) in enumerate(zip(factors, shape, strict=True)):
        x = (np.arange(n) - (f - 1) / 2) / f
        i0 = np.clip(np.floor(x).astype(int), 0, out.shape[axis] - 1)
        i1 = np.minimum(i0 + 1, out.shape[axis] - 1)
        w = np.clip(x - i0, 0, 1).astype(np.float32)
        wshape = [1] * 3
        wshape[axis] = n
        w = w.reshape(wshape)
        out = np.take(out, i0, axis=axis) * (1 - w) + np.take(out, i1, axis=axis) * w
    return out
