"""Test heads built from a real average head, changed by real anonymization.

The head is pydeface's `mean_reg2mean.nii.gz` (an average of real T1w
heads), never used as is: each test head is that mean warped by a random
smooth non-linear field (a few millimetres) and a change of scale and pose,
resampled onto a scanner-like grid (its own spacing and axis order), with
Rician noise so the air is noisy like a scan. The same warp carries
pydeface's face mask and the template's brain zone.

Truths, defined here and never by the code under test:

- head: the noise-free warped mean head above 10% of its 99th percentile
  (air is below 3% of it, the scalp about 60%), closed, holes filled in 3D
  and slice by slice, largest component;
- pydeface: the head where the warped face mask is 0 (those voxels are set
  to 0, air included, as pydeface does);
- quickshear: the head voxels that `quickshear.quickshear` zeroed, given the
  warped brain zone as its brain mask;
- blurred: the head inside pydeface's face zone, replaced by a strong
  Gaussian blur (sigma 4 mm) of the noise-free head, so the noise is gone;
- skull-stripped: everything outside the warped brain set to 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np
import quickshear
from scipy import ndimage

from openmind_curate.masks.template import BRAIN, pydeface_data, template_labels


@dataclass(frozen=True)
class Warp:
    """A test head's grid and deformation (`seed` draws scale, pose, field, noise)."""

    seed: int
    spacing: tuple[float, float, float]
    axes: tuple[int, int, int]  # world axis (0 = x, 1 = y, 2 = z) along each array axis
    flips: tuple[int, int, int]  # +1 or -1: RAS or reversed along each array axis
    fov_mm: tuple[float, float, float] = (190.0, 240.0, 230.0)  # world x, y, z


WARPS = (
    Warp(1, (1.0, 1.0, 1.2), (0, 1, 2), (1, 1, 1)),
    Warp(2, (1.2, 1.1, 1.1), (1, 2, 0), (-1, -1, 1)),  # PIR-like, sagittal slices last
)


@dataclass(frozen=True)
class RealHead:
    name: str
    data: np.ndarray  # float32, the image
    affine: np.ndarray
    anatomy: np.ndarray  # bool: head voxels that still carry signal
    removed: np.ndarray  # bool: head voxels the anonymization altered (empty if none)
    kind: str | None  # the anonymization kind the image should be given
    head: np.ndarray  # bool: the whole head before the change


def _grid(w: Warp, centre: np.ndarray) -> tuple[tuple[int, int, int], np.ndarray]:
    shape = tuple(int(round(w.fov_mm[a] / s)) for a, s in zip(w.axes, w.spacing, strict=True))
    affine = np.zeros((4, 4))
    affine[3, 3] = 1.0
    for i, (a, s, f) in enumerate(zip(w.axes, w.spacing, w.flips, strict=True)):
        affine[a, i] = s * f
    affine[:3, 3] = centre - affine[:3, :3] @ ((np.array(shape) - 1) / 2)
    return shape, affine  # type: ignore[return-value]


def _rotation(deg: np.ndarray) -> np.ndarray:
    out = np.eye(3)
    for axis, angle in enumerate(np.deg2rad(deg)):
        c, s = np.cos(angle), np.sin(angle)
        r = np.eye(3)
        i, j = [a for a in range(3) if a != axis]
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        out = out @ r
    return out


def _field(mm: list[np.ndarray], rng: np.random.Generator, amplitude: float) -> list[np.ndarray]:
    """A smooth displacement (three components): three plane waves of
    wavelength 100-200 mm per component, each up to `amplitude` mm."""
    out = []
    for _ in range(3):
        d = np.zeros(np.broadcast_shapes(*(m.shape for m in mm)), np.float32)
        for _ in range(3):
            direction = rng.normal(size=3)
            direction /= np.linalg.norm(direction)
            k = 2 * np.pi / rng.uniform(100.0, 200.0)
            phase = sum(k * direction[a] * mm[a] for a in range(3)) + rng.uniform(0, 2 * np.pi)
            d += np.float32(amplitude * rng.uniform(0.5, 1.0)) * np.sin(phase).astype(np.float32)
        out.append(d)
    return out


def warp_mean_head(w: Warp) -> dict[str, np.ndarray]:
    """The noise-free mean head, its face-mask keep zone and brain zone, warped
    onto `w`'s grid, and that grid's affine."""
    img = pydeface_data("mean_reg2mean.nii.gz")
    mean = np.asarray(img.dataobj, dtype=np.float32)
    keep = np.asarray(pydeface_data("facemask.nii.gz").dataobj, dtype=np.float32)
    bits, _ = template_labels()
    brain = ((bits & BRAIN) > 0).astype(np.float32)
    src = img.affine
    centre = src[:3, :3] @ ((np.array(mean.shape) - 1) / 2) + src[:3, 3]
    rng = np.random.default_rng(w.seed)
    shape, affine = _grid(w, centre + rng.uniform(-8, 8, 3))
    scale = rng.uniform(0.9, 1.1, 3)
    pose = _rotation(rng.uniform(-6, 6, 3))
    # Output world x -> template world: about the centre, scaled by 1/scale, rotated, displaced.
    ijk = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij", sparse=True)
    world = [sum(affine[a, i] * ijk[i] for i in range(3)) + affine[a, 3] for a in range(3)]
    disp = _field(world, rng, 2.0)
    rel = [world[a] - centre[a] for a in range(3)]
    m = pose / scale[None, :]
    tpl = [sum(m[a, b] * rel[b] for b in range(3)) + centre[a] + disp[a] for a in range(3)]
    inv = np.linalg.inv(src)
    coords = np.stack(
        [sum(inv[a, b] * tpl[b] for b in range(3)) + inv[a, 3] for a in range(3)]
    ).astype(np.float32)
    del tpl, world, disp, rel
    out = {
        name: ndimage.map_coordinates(arr, coords, order=1, cval=cval, prefilter=False)
        for name, arr, cval in (
            ("mean", mean, float(mean.min())),
            ("keep", keep, 1.0),
            ("brain", brain, 0.0),
        )
    }
    out["affine"] = affine
    return out


def head_truth(clean: np.ndarray) -> np.ndarray:
    """The head of a noise-free mean-head image: 10% of its 99th percentile,
    closed, holes filled (3D, then slice by slice along each axis), largest part."""
    mask = clean > 0.10 * float(np.percentile(clean, 99))
    mask = ndimage.binary_closing(mask, iterations=2) | mask
    mask = ndimage.binary_fill_holes(mask)
    for axis in range(3):
        for i in range(mask.shape[axis]):
            sl = tuple(i if a == axis else slice(None) for a in range(3))
            mask[sl] = ndimage.binary_fill_holes(mask[sl])
    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        mask = labels == int(np.argmax(sizes))
    return mask


def rician(clean: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    re = clean + rng.normal(0.0, sigma, clean.shape).astype(np.float32)
    im = rng.normal(0.0, sigma, clean.shape).astype(np.float32)
    return np.hypot(re, im).astype(np.float32)


def real_heads(w: Warp) -> list[RealHead]:
    """The five cases of one warp: intact, pydeface, quickshear, blurred, skull-stripped."""
    warped = warp_mean_head(w)
    clean, affine = warped["mean"], warped["affine"]
    keep, brain = warped["keep"] > 0.5, warped["brain"] > 0.5
    head = head_truth(clean)
    brain &= head
    rng = np.random.default_rng(100 + w.seed)
    sigma = float(rng.uniform(0.02, 0.04)) * float(np.percentile(clean, 99))
    noisy = rician(clean, sigma, rng)
    empty = np.zeros(head.shape, bool)
    tag = f"warp{w.seed}"
    cases = [RealHead(f"{tag}-intact", noisy, affine, head, empty, None, head)]

    defaced = np.where(keep, noisy, 0.0).astype(np.float32)
    cases.append(
        RealHead(f"{tag}-pydeface", defaced, affine, head & keep, head & ~keep, "filled", head)
    )

    anat_img = nib.Nifti1Image(noisy, affine)
    brain_img = nib.Nifti1Image(brain.astype(np.uint8), affine)
    sheared = np.asarray(quickshear.quickshear(anat_img, brain_img, buff=10).dataobj)
    cut = (sheared == 0) & (noisy != 0)
    cases.append(
        RealHead(
            f"{tag}-quickshear",
            sheared.astype(np.float32),
            affine,
            head & ~cut,
            head & cut,
            "filled",
            head,
        )
    )

    zone = ~keep
    sigma_vox = [4.0 / s for s in w.spacing]
    blurred = np.where(zone, ndimage.gaussian_filter(clean, sigma_vox), noisy).astype(np.float32)
    cases.append(RealHead(f"{tag}-blurred", blurred, affine, head, head & zone, "blurred", head))

    stripped = np.where(brain, noisy, 0.0).astype(np.float32)
    cases.append(
        RealHead(
            f"{tag}-skull-stripped", stripped, affine, brain, head & ~brain, "skull-stripped", head
        )
    )
    return cases
