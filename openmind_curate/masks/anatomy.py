"""The anatomy mask: where the imaged head carries signal.

Steps, on the 4 mm working grid:

1. Background noise. Magnitude images have Rayleigh-distributed air
   (median = 1.1774 sigma). We take the median of the non-zero voxels in the
   blocks below Otsu's threshold, which stays right while ghosts fill less than
   half of the air.
2. A noise threshold (block mean far above the air's, given the block size)
   gives a first foreground, closed, hole-filled, largest component. N/2
   ghosts and wrap-around can join it, so the shape the template is fitted
   to (`masks.template`) is that foreground within `fit_reach_voxels` of the
   bright core (above Otsu's threshold): dim scalp stays, distant ghosts go.
3. The edge threshold. Blur and partial volume spread the head's edge over
   millimetres, and a noise threshold sits at its foot. We threshold at a
   fraction of the intensity just inside the fitted shape's border (the
   half-maximum idea), never below the noise threshold, and above the N/2
   ghost of the brightest tissue when `n2_ghost` finds one.
4. Only inside the fitted head envelope, dilated by `envelope_voxels`:
   ghosts and wrap-around away from the head are dropped.
5. Holes filled in 3D and slice by slice (cavities open to a cut field of
   view), largest component, then the boundary placed at full resolution by
   linear interpolation of the coarse image (`refine`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from dipy.segment.threshold import otsu
from scipy import ndimage

from openmind_curate.masks.grid import upsample, upsample_linear

#: Rayleigh (air) median, mean and standard deviation over sigma.
RAYLEIGH_MEDIAN, RAYLEIGH_MEAN, RAYLEIGH_STD = 1.1774, 1.2533, 0.6551


@dataclass(frozen=True)
class AnatomyConfig:
    edge_fraction: float = 0.4  # of the intensity just inside the border
    noise_z: float = 6.0  # block-mean z-score above the air for the first foreground
    ghost_margin: float = 1.6  # threshold above the brightest tissue's N/2 ghost
    envelope_voxels: int = 2  # envelope dilation, in working-grid voxels
    fit_reach_voxels: int = 3  # how far beyond the bright core the fitted shape reaches


@dataclass(frozen=True)
class Background:
    sigma: float  # Rayleigh sigma of the air (0 if the air is zero-filled)
    zero_fraction: float  # of the dark voxels that are (about) zero
    zero_level: float = 0.0  # values up to this count as zero


def background(low: np.ndarray, data: np.ndarray, factors) -> Background:
    """The air's noise, from full-resolution voxels in the dark blocks."""
    positive = low[low > 0]
    if positive.size == 0:
        return Background(0.0, 1.0)
    # "Zero" allows for interpolation dust: a resampled skull-stripped image
    # (nilearn's MNI152) has air of 1e-5 of its range, not exact zeros.
    tiny = 1e-3 * float(np.percentile(low, 99))
    scale = float(np.median(positive))
    t = float(np.expm1(otsu(np.log1p(positive / scale))) * scale)
    # Every other voxel is plenty for a median, and halves the cost.
    step = 2 if all(f % 2 == 0 for f in factors) else 1
    sub = data[::step, ::step, ::step]
    sub_factors = tuple(f // step for f in factors)
    vals = sub[upsample(low < t / 2, sub_factors, sub.shape)]
    if vals.size < 100:
        return Background(0.0, 0.0, tiny)
    zero = float(np.mean(np.abs(vals) <= tiny))
    nonzero = vals[np.abs(vals) > tiny]
    if zero > 0.5 or nonzero.size < 100:
        return Background(0.0, zero, tiny)
    return Background(float(np.median(np.abs(nonzero)) / RAYLEIGH_MEDIAN), zero, tiny)


def largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """3D fill, then 2D fill along every axis (holes open to a cut edge).

    A hole is a background component that does not reach the border, found by
    labelling (scipy's `binary_fill_holes` dilates until stable: ten times
    slower here).
    """
    out = mask | _enclosed(~mask, ndimage.generate_binary_structure(3, 1), range(3))
    for axis in range(3):
        st = np.zeros((3, 3, 3), bool)
        sl = [slice(None)] * 3
        sl[axis] = 1
        st[tuple(sl)] = ndimage.generate_binary_structure(2, 1)
        out |= _enclosed(~out, st, [a for a in range(3) if a != axis])
    return out


def _enclosed(background: np.ndarray, structure: np.ndarray, border_axes) -> np.ndarray:
    """Background components (by `structure`) touching no face of `border_axes`."""
    labels, n = ndimage.label(background, structure)
    if n == 0:
        return np.zeros(background.shape, bool)
    touching = np.zeros(n + 1, bool)
    for axis in border_axes:
        for idx in (0, -1):
            face = labels[tuple(idx if a == axis else slice(None) for a in range(3))]
            touching[np.unique(face)] = True
    touching[0] = True
    return ~touching[labels]


def clean(mask: np.ndarray) -> np.ndarray:
    mask = ndimage.binary_closing(mask, iterations=1, border_value=0) | mask
    return largest_component(fill_holes(mask))


def noise_threshold(sigma: float, block: int, z: float) -> float:
    if sigma <= 0:
        return 0.0
    return sigma * (RAYLEIGH_MEAN + z * RAYLEIGH_STD / np.sqrt(block))


def edge_threshold(low: np.ndarray, first: np.ndarray, fraction: float) -> float:
    """A fraction of the median intensity in the two voxels inside the border."""
    inner = ndimage.binary_erosion(first, iterations=1)
    shell = inner & ~ndimage.binary_erosion(inner, iterations=2)
    if shell.sum() < 10:
        shell = first
    return fraction * float(np.median(low[shell]))


@dataclass(frozen=True)
class Ghost:
    axis: int  # array axis of the strongest N/2 ghost, -1 if none
    amplitude: float  # ghost / parent intensity


def n2_ghost(low: np.ndarray, air_mean: float, max_amplitude: float = 0.4) -> Ghost:
    """The N/2 (Nyquist) ghost: the image shifted by half the field of view,
    scaled by `amplitude`, lying over the air.

    Where the shifted image is bright, the ratio of the image to it is the
    same number everywhere the ghost lies over air. Air alone gives a ratio
    of about 0, and head tissue spreads the ratio widely. So the histogram of
    that ratio peaks at 0 for a clean image, and at the ghost's amplitude when
    the ghost covers more of the air than clean air does.
    """
    positive = low[low > air_mean]
    if positive.size < 10:
        return Ghost(-1, 0.0)
    hi = float(otsu(positive))
    best = Ghost(-1, 0.0)
    edges = np.linspace(0.0, 1.0, 201)
    top = int(max_amplitude * 200)
    for axis in range(3):
        n = low.shape[axis]
        if n < 8:
            continue
        shifted = np.roll(low, n // 2, axis=axis)
        sel = shifted > hi
        ratio = (low[sel] - air_mean) / shifted[sel]
        hist = np.convolve(np.histogram(ratio, edges)[0], np.ones(3) / 3, mode="same")
        peak = int(np.argmax(hist[:top]))
        if peak < 2 or hist[peak] < 20 or hist[peak] < 1.25 * hist[0]:
            continue
        amp = float((edges[peak] + edges[peak + 1]) / 2)
        if amp > best.amplitude:
            best = Ghost(axis, amp)
    return best


def refine(fg: np.ndarray, low: np.ndarray, threshold: float, factors, shape) -> np.ndarray:
    """The boundary at full resolution: the threshold crossing of the coarse
    image, interpolated linearly, inside a band of one coarse voxel either side
    of the coarse boundary (inside it is head, outside it is air).

    The crossing is found on a grid half as coarse as the working one (2 mm
    for 1 mm data) and repeated onto the voxels: a 1 mm data set then costs
    an eighth of the interpolation, for half a voxel of boundary precision.
    """
    core = ndimage.binary_erosion(fg, border_value=1)
    outer = ndimage.binary_dilation(fg)
    span = float(np.abs(low - threshold).max()) + 1.0
    field = np.where(core, span, np.where(outer, low - threshold, -span))
    step = tuple(f // 2 if f % 2 == 0 else 1 for f in factors)
    mid_factors = tuple(f // g for f, g in zip(factors, step, strict=True))
    mid_shape = tuple(-(-n // g) for n, g in zip(shape, step, strict=True))
    mid = upsample_linear(field, mid_factors, mid_shape) > 0
    return upsample(mid, step, shape)
