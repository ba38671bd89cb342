"""What anonymization did to an image, voxel by voxel.

Three kinds, each decided from the data inside the fitted head envelope
(`masks.template`):

- **filled** (pydeface, mri_deface, quickshear): the face zone holds one
  exact value, almost always 0. Thermal noise never gives a run of identical
  values inside the head, so exact equality is the test, and the removed zone
  is recovered to the voxel wherever the air is noisy.
- **blurred** (face-blurring tools): noise is gone. The local noise variance
  (`block_roughness`) of the face zone is compared with the noise variance measured in the air;
  an intact face holds at least the noise, a blurred one a small fraction.
- **skull-stripped**: the air is exactly zero and what remains is the size of
  a brain. Everything in the head envelope outside the anatomy was removed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from openmind_curate.masks.grid import block_mean, upsample


@dataclass(frozen=True)
class AnonConfig:
    min_fill_ml: float = 5.0  # smallest filled zone that counts as defacing
    blur_ratio: float = 0.2  # face-zone / air noise variance below which a face is blurred
    max_brain_litres: float = 2.5  # a skull-stripped image holds at most this much
    min_zero_air: float = 0.95  # fraction of the air exactly zero in a skull-stripped image


def is_stripped(zero_fraction: float, litres: float, cfg: AnonConfig) -> bool:
    """Skull-stripped: the air is zero-filled and the foreground is brain-sized."""
    return zero_fraction >= cfg.min_zero_air and litres <= cfg.max_brain_litres


def filled_zone(
    data: np.ndarray, envelope: np.ndarray, voxel_ml: float, factors, cfg: AnonConfig
) -> tuple[np.ndarray, float | None, np.ndarray | None]:
    """Voxels of the envelope that hold the fill value (0, or the image minimum),
    the value, and the zone's fraction per working-grid block.

    Pieces smaller than `min_fill_ml` are dropped (found on the working grid,
    where labelling is cheap): defacing removes one or two large pieces.
    """
    best: tuple[int, float | None, np.ndarray | None] = (0, None, None)
    for value in {0.0, float(data.min())}:
        same = data == value
        if np.count_nonzero(same) * voxel_ml < cfg.min_fill_ml:
            continue  # the usual intact image: one pass and out
        zone = envelope & same
        n = int(np.count_nonzero(zone))
        if n > best[0]:
            best = (n, value, zone)
    count, value, zone = best
    if zone is None or count * voxel_ml < cfg.min_fill_ml:
        return np.zeros(data.shape, bool), None, None
    low = block_mean(zone.astype(np.float32), factors)
    labels, n = ndimage.label(low > 0)
    if n > 1:
        sizes = ndimage.sum_labels(low, labels, range(n + 1)) * voxel_ml * np.prod(factors)
        keep = sizes >= cfg.min_fill_ml
        keep[0] = False
        zone &= upsample(keep[labels], factors, data.shape)
        low = np.where(keep[labels], low, 0.0)
    if np.count_nonzero(zone) * voxel_ml < cfg.min_fill_ml:
        return np.zeros(data.shape, bool), None, None
    return zone, value, low


def block_variance(data: np.ndarray, factors) -> np.ndarray:
    """Variance within each working-grid block."""
    mean = block_mean(data, factors)
    return np.maximum(block_mean(data * data, factors) - mean * mean, 0.0)


def block_roughness(data: np.ndarray, factors, where: np.ndarray | None = None) -> np.ndarray:
    """Local noise variance per block: the mean squared second difference
    along the first axis, over 6 (white noise of variance s^2 gives 6 s^2;
    tissue gradients, being smooth at the voxel scale, give about 0).

    With `where` (a working-grid mask), only its bounding box is computed;
    the other blocks are 0.
    """
    low_shape = tuple(-(-n // f) for n, f in zip(data.shape, factors, strict=True))
    box = tuple(slice(0, n) for n in low_shape)
    if where is not None:
        if not where.any():
            return np.zeros(low_shape, np.float32)
        idx = np.argwhere(where)
        box = tuple(slice(int(a), int(b) + 1) for a, b in zip(idx.min(0), idx.max(0), strict=True))
    crop = data[tuple(slice(b.start * f, b.stop * f) for b, f in zip(box, factors, strict=True))]
    d2 = np.zeros(crop.shape, np.float32)
    d2[1:-1] = crop[2:] - 2 * crop[1:-1] + crop[:-2]
    np.square(d2, out=d2)
    out = np.zeros(low_shape, np.float32)
    out[box] = block_mean(d2, factors)[tuple(slice(0, b.stop - b.start) for b in box)] / 6.0
    return out


def blurred_zone(
    roughness: np.ndarray,
    anat_low: np.ndarray,
    face_low: np.ndarray,
    noise_sigma: float,
    cfg: AnonConfig,
) -> tuple[np.ndarray, float]:
    """Working-grid blocks of a blurred face, and the face's roughness relative
    to the noise variance (the air's sigma squared; without noisy air, the
    smoothest tenth of the head's blocks)."""
    inner = ndimage.binary_erosion(anat_low)
    face = inner & face_low
    rest = inner & ~ndimage.binary_dilation(face_low, iterations=2)
    if face.sum() < 8 or rest.sum() < 8:
        return np.zeros(anat_low.shape, bool), 1.0
    ref = noise_sigma**2 if noise_sigma > 0 else float(np.percentile(roughness[rest], 10))
    ratio = float(np.median(roughness[face])) / max(ref, 1e-12)
    if ratio >= cfg.blur_ratio:
        return np.zeros(anat_low.shape, bool), ratio
    near = ndimage.binary_dilation(face_low, iterations=2) & anat_low
    zone = near & (roughness < cfg.blur_ratio * ref)
    zone = ndimage.binary_opening(zone) | (zone & face_low)
    labels, n = ndimage.label(zone)
    if n > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        zone = labels == int(np.argmax(sizes))
    return ndimage.binary_closing(zone) & anat_low, ratio
