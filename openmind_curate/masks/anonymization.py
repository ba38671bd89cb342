"""What anonymization did to an image, voxel by voxel.

Three kinds, each decided from the data; the fitted template
(`masks.template`) only says where a head would have been:

- **filled** (pydeface, mri_deface, quickshear): the removed zone holds one
  exact value, almost always 0. Thermal noise never gives a run of identical
  values inside the head, so exact equality is the test, and the zone's cut
  faces are recovered to the voxel wherever the air is noisy. Those tools
  fill air too (a face box, a half-space running out to the field of view's
  edge), so the fitted head, refitted on all the head the image still shows,
  says which filled voxels were head. A fill that stops short of every edge
  was confined to the head by the tool, and is taken as it is
  (`head_only_fill`).
- **blurred** (face-blurring tools): noise is gone. The local noise variance
  (`block_roughness`) of the face zone is compared with the noise variance
  measured in the air; an intact face holds at least the noise, a blurred one
  a small fraction. The blur's extent is then set voxel by voxel from the
  same measure (`blurred_voxels`), not from the template's face zone.
- **skull-stripped**: the air is exactly zero and what remains is the size of
  a brain. Everything in the head envelope outside the anatomy was removed.

Not done: estimating a shear plane when the air is zero-filled too (then
exact zeros cannot tell a cut face from the air).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from openmind_curate.masks.anatomy import fill_holes
from openmind_curate.masks.grid import block_mean, upsample


@dataclass(frozen=True)
class AnonConfig:
    min_fill_ml: float = 5.0  # smallest filled zone that counts as defacing
    blur_ratio: float = 0.2  # face-zone / air noise variance below which a face is blurred
    max_brain_litres: float = 2.5  # a skull-stripped image holds at most this much
    min_zero_air: float = 0.95  # fraction of the air exactly zero in a skull-stripped image
    blur_reach_blocks: int = 8  # how far beyond the template's face zone a blur may reach
    max_edge_blocks: int = 8  # a fill touching the field of view's edge more than this filled air


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
    searched: np.ndarray | None = None,
) -> tuple[np.ndarray, float]:
    """Working-grid blocks of a blurred face, and the face's roughness relative
    to the noise variance (the air's sigma squared; without noisy air, the
    smoothest tenth of the head's blocks).

    The template's face zone decides whether the face is blurred; the smooth
    blocks of the head within `blur_reach_blocks` of it (and in `searched`,
    where `roughness` was computed) say how far the blur reaches."""
    inner = ndimage.binary_erosion(anat_low)
    face = inner & face_low
    rest = inner & ~ndimage.binary_dilation(face_low, iterations=2)
    if face.sum() < 8 or rest.sum() < 8:
        return np.zeros(anat_low.shape, bool), 1.0
    ref = noise_sigma**2 if noise_sigma > 0 else float(np.percentile(roughness[rest], 10))
    ratio = float(np.median(roughness[face])) / max(ref, 1e-12)
    if ratio >= cfg.blur_ratio:
        return np.zeros(anat_low.shape, bool), ratio
    near = ndimage.binary_dilation(face_low, iterations=cfg.blur_reach_blocks) & anat_low
    if searched is not None:
        near &= searched
    zone = near & (roughness < cfg.blur_ratio * ref)
    zone = ndimage.binary_opening(zone) | (zone & face_low)
    labels, n = ndimage.label(zone)
    if n > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        zone = labels == int(np.argmax(sizes))
    return ndimage.binary_closing(zone) & anat_low, ratio


def blurred_voxels(
    data: np.ndarray,
    seed: np.ndarray,
    level: float,
    noise_var: float,
    reach: tuple[int, int, int],
    width: int = 7,
    grow: int = 3,
) -> np.ndarray:
    """The blurred voxels joined to `seed` (the blocks found blurred) inside
    the head the image shows, within `reach` voxels of the seed.

    A voxel is blurred where the local variance (squared second differences
    along the first axis over 6, box-averaged over `width` voxels) is below
    a fifth of the air's noise variance. A fifth keeps Rayleigh air (0.43 of
    it) and intact tissue (at least 1; a 7-voxel box falls that low about 5
    standard deviations from its mean) out. The data, not the template's face
    zone, say how far the blur reaches.

    The head is the image above `level` (the template's own head rule, a
    fraction of the image's 99th percentile), holes filled. A blurred face
    has no noise but keeps its signal, and blurring leaves the 10% level of a
    tissue/air edge within about a millimetre of where it was, whereas the
    fitted template misses a face that differs from the average by a few
    millimetres; the noise-based anatomy runs further out on the blur's
    smooth tail. Noisy air never counts (it is not smooth).

    A box straddling the border with the noisy head is below a fifth of the
    level only `width // 2` voxels inside the blur for noise alone, and the
    tool's step between its blurred copy and the untouched image (second
    differences across it are large) moves that one voxel further in, so the
    result is grown back by `grow` = 3 voxels inside the head.
    """
    out = np.zeros(data.shape, bool)
    if not seed.any() or noise_var <= 0:
        return out
    idx = [np.flatnonzero(seed.any(axis=tuple(b for b in range(3) if b != a))) for a in range(3)]
    box = tuple(
        slice(max(int(i[0]) - r, 0), min(int(i[-1]) + r + 1, n))
        for i, r, n in zip(idx, reach, data.shape, strict=True)
    )
    crop = data[box].astype(np.float32)
    d2 = np.zeros(crop.shape, np.float32)
    d2[1:-1] = crop[2:] - 2 * crop[1:-1] + crop[:-2]
    np.square(d2, out=d2)
    local = ndimage.uniform_filter(d2, width) / 6.0
    inside = fill_holes(crop > level)
    smooth = inside & (local < 0.2 * noise_var)
    labels, n = ndimage.label(smooth)
    if n == 0:
        return out
    hit = np.unique(labels[seed[box] & smooth])
    found = np.isin(labels, hit[hit > 0])
    out[box] = ndimage.binary_dilation(found, iterations=grow) & inside
    return out


def head_only_fill(
    same_low: np.ndarray, zone_low: np.ndarray, cfg: AnonConfig
) -> np.ndarray | None:
    """The filled region itself, on the working grid, when the tool filled only
    head voxels; None when it filled air too.

    pydeface, mri_deface and quickshear fill a zone or a half-space that runs
    out to the edge of the field of view, air included, so the fitted head must
    say which filled voxels were head. A fill that stops short of every edge
    is surrounded by noisy air: the tool filled the head only, and the fill's
    own shape is the answer (a template fitted to an unusual head could only
    cut it). The filled blocks joined to the zone found in the envelope count;
    `max_edge_blocks` of them on the array's faces are tolerated (a neck cut by
    the field of view).
    """
    labels, n = ndimage.label(same_low > 0)
    if n == 0:
        return None
    joined = np.unique(labels[zone_low > 0])
    region = np.isin(labels, joined[joined > 0])
    edge = sum(int(np.count_nonzero(region.take(idx, axis=a))) for a in range(3) for idx in (0, -1))
    return region if region.any() and edge <= cfg.max_edge_blocks else None
