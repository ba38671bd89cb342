"""Both masks of one image, from its array and affine (pure; no file I/O)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from dipy.segment.threshold import otsu
from nibabel.affines import voxel_sizes
from scipy import ndimage

from openmind_curate.masks import anatomy as anat_mod
from openmind_curate.masks import anonymization as anon_mod
from openmind_curate.masks import template as tpl_mod
from openmind_curate.masks.grid import (
    block_mean,
    factors_for,
    low_affine,
    upsample,
    upsample_linear,
)


@dataclass(frozen=True)
class MaskConfig:
    working_mm: float = 4.0
    anatomy: anat_mod.AnatomyConfig = field(default_factory=anat_mod.AnatomyConfig)
    anon: anon_mod.AnonConfig = field(default_factory=anon_mod.AnonConfig)


@dataclass(frozen=True)
class WorkingGrid:
    """What the masks computed on the working grid, for the metrics to reuse."""

    factors: tuple[int, int, int]
    low: np.ndarray  # block means of the volume
    background: anat_mod.Background
    anat_low: np.ndarray | None = None  # the anatomy on the working grid, if known there


@dataclass
class Masks:
    anatomy: np.ndarray  # bool, image grid
    anonymization: np.ndarray  # bool, image grid
    is_brain_extracted: bool
    anonymization_kind: str | None  # "filled", "blurred", "skull-stripped" or None
    details: dict[str, Any]
    working: WorkingGrid | None = None


def reference_volume(data: np.ndarray) -> np.ndarray:
    """A 3D volume to mask: the image, or for a series the mean of its
    brightest volumes (the b=0 volumes of a DWI, all volumes of a BOLD run)."""
    if data.ndim == 3:
        return data
    flat = data.reshape(-1, data.shape[3])
    means = flat.mean(0)
    keep = means >= 0.9 * means.max()
    return data[..., keep].mean(axis=3, dtype=np.float32)


def _empty(shape, details) -> Masks:
    z = np.zeros(shape, bool)
    return Masks(z, z.copy(), False, None, details)


def phase_foreground(data: np.ndarray, factors) -> np.ndarray:
    """Phase images: inside the head the phase is smooth, in the air uniform
    on [-pi, pi] (standard deviation pi/sqrt(3) = 1.81)."""
    var = anon_mod.block_variance(data, factors)
    scale = max(float(np.percentile(np.abs(data), 99)), 1e-6) / np.pi
    return anat_mod.clean(np.sqrt(var) / scale < 0.9)


def compute_masks(
    data: np.ndarray,
    affine: np.ndarray,
    *,
    phase: bool = False,
    brain_extracted: bool | None = None,
    config: MaskConfig | None = None,
) -> Masks:
    """Anatomy and anonymization masks of `data` (3D, or 4D reduced first).

    `brain_extracted` forces the decision (DWI-derived maps are brain-masked
    by construction); None detects it.
    """
    cfg = config or MaskConfig()
    ac = cfg.anatomy
    vol = reference_volume(np.asarray(data)).astype(np.float32, copy=False)
    if not np.isfinite(np.sum(vol, dtype=np.float64)):  # one pass; NaN and Inf are rare
        vol = np.nan_to_num(vol)
    shape = vol.shape
    spacing = tuple(float(s) for s in voxel_sizes(affine))
    f = factors_for(spacing, cfg.working_mm)
    low = block_mean(vol, f)
    low_ml = float(np.prod(spacing) * np.prod(f)) / 1000.0
    details: dict[str, Any] = {"working_factors": list(f)}
    if not np.any(vol) or float(vol.max()) == float(vol.min()):
        details["reason"] = "constant image"
        return _empty(shape, details)
    if phase:
        fg = phase_foreground(vol, f)
        details["method"] = "phase smoothness"
        anat = upsample(fg, f, shape)
        return Masks(anat, np.zeros(shape, bool), False, None, details)

    bg = anat_mod.background(low, vol, f)
    tn = anat_mod.noise_threshold(bg.sigma, int(np.prod(f)), ac.noise_z)
    first = anat_mod.clean(low > max(tn, 1e-6 * float(low.max())))
    if first.sum() < 8:
        details["reason"] = "no foreground"
        return _empty(shape, details)
    litres = first.sum() * low_ml / 1000.0
    stripped = (
        anon_mod.is_stripped(bg.zero_fraction, litres, cfg.anon)
        if brain_extracted is None
        else brain_extracted
    )
    details.update(noise_sigma=bg.sigma, air_zero_fraction=bg.zero_fraction, litres=litres)

    if stripped:
        return _stripped(vol, affine, low, first, bg, f, details)
    return _head(vol, affine, low, first, bg, tn, f, cfg, details)


def _stripped(vol, affine, low, first, bg, f, details) -> Masks:
    """Skull-stripped: the anatomy is what is left; the anonymization is the
    rest of the head envelope fitted to the brain."""
    shape = vol.shape
    la = low_affine(affine, f)
    world_to_mni = tpl_mod.fit(first.astype(np.float32), la, "brain")
    anat = upsample(ndimage.binary_dilation(first), f, shape) & (np.abs(vol) > bg.zero_level)
    anat = anat_mod.largest_component(anat) if anat.any() else anat
    head = tpl_mod.labels_on(low.shape, la, world_to_mni, ("upper_head",))["upper_head"]
    env = upsample_linear(head, f, shape)
    details["world_to_mni"] = world_to_mni.round(5).tolist()
    return Masks(
        anat, (env > 0.5) & ~anat, True, "skull-stripped", details, WorkingGrid(f, low, bg)
    )


def _head(vol, affine, low, first, bg, tn, f, cfg: MaskConfig, details) -> Masks:
    """A whole head: the anatomy mask (`masks.anatomy`), then a filled or a
    blurred face inside the fitted envelope (`masks.anonymization`)."""
    ac, shape = cfg.anatomy, vol.shape
    la = low_affine(affine, f)
    ghost = anat_mod.n2_ghost(low, anat_mod.RAYLEIGH_MEAN * bg.sigma)
    hi = float(otsu(low[first]))
    bright = anat_mod.clean(low > max(tn, hi))
    reach = ndimage.binary_dilation(bright, iterations=ac.fit_reach_voxels)
    fit_shape = anat_mod.clean(first & reach)
    world_to_mni = tpl_mod.fit(fit_shape.astype(np.float32), la, "head")
    labels = tpl_mod.labels_on(low.shape, la, world_to_mni, ("head", "face"))
    te = max(
        anat_mod.edge_threshold(low, fit_shape, ac.edge_fraction),
        tn,
        ac.ghost_margin * ghost.amplitude * float(np.percentile(low[fit_shape], 95)),
    )
    env_low = labels["head"] > 0.5
    allowed = ndimage.binary_dilation(env_low, iterations=ac.envelope_voxels)
    fg = anat_mod.clean((low > te) & allowed)
    anat = anat_mod.refine(fg, low, te, f, shape)
    details.update(
        world_to_mni=world_to_mni.round(5).tolist(),
        edge_threshold=te,
        ghost_axis=ghost.axis,
        ghost_amplitude=ghost.amplitude,
    )

    voxel_ml = float(np.prod(voxel_sizes(affine))) / 1000.0
    rough = upsample(ndimage.binary_dilation(env_low), f, shape)
    zone, value, zone_low = anon_mod.filled_zone(vol, rough, voxel_ml, f, cfg.anon)
    if value is not None:
        level = tpl_mod.HEAD_FRACTION * float(np.percentile(low[fit_shape], 99))
        like_template = anat_mod.clean(fit_shape & (low > level))
        world_to_mni = _refit_known(like_template, zone_low > 0, la, world_to_mni)
        head_only = anon_mod.head_only_fill(block_mean(vol == value, f), zone_low, cfg.anon)
        if head_only is None:
            envelope = _smooth_envelope(shape, affine, world_to_mni, zone)
        else:
            envelope = upsample(ndimage.binary_dilation(head_only), f, shape)
        zone, value, zone_low = anon_mod.filled_zone(vol, envelope, voxel_ml, f, cfg.anon)
        details["world_to_mni"] = world_to_mni.round(5).tolist()
        details["head_only_fill"] = head_only is not None
    if value is not None:
        details["fill_value"] = value
        working = WorkingGrid(f, low, bg, fg & ~(zone_low > 0.5))
        return Masks(anat & ~zone, zone, False, "filled", details, working)
    working = WorkingGrid(f, low, bg, fg)
    face_low = labels["face"] > 0.5
    # Around the face zone only (a full pass costs more than the rest); when
    # the face is blurred, again over the reach of a blur beyond that zone.
    searched = _box_of(labels["face"] > 0.1) if bg.sigma > 0 else None
    roughness = anon_mod.block_roughness(vol, f, searched)
    blur_low, ratio = anon_mod.blurred_zone(roughness, fg, face_low, bg.sigma, cfg.anon, searched)
    if blur_low.any() and searched is not None:
        blocks = cfg.anon.blur_reach_blocks
        searched = _box_of(ndimage.binary_dilation(labels["face"] > 0.1, iterations=blocks))
        roughness = anon_mod.block_roughness(vol, f, searched)
        blur_low, ratio = anon_mod.blurred_zone(
            roughness, fg, face_low, bg.sigma, cfg.anon, searched
        )
    details["face_noise_ratio"] = ratio
    if blur_low.any():
        if bg.sigma > 0:  # the edge at full resolution, against the air's noise
            seed = upsample(blur_low, f, shape) & anat
            span = tuple(cfg.anon.blur_reach_blocks * k for k in f)
            # The face's edge from the data, by the template's head rule.
            level = tpl_mod.HEAD_FRACTION * float(np.percentile(vol, 99))
            anon = anon_mod.blurred_voxels(vol, seed, level, bg.sigma**2, span) | seed
        else:
            anon = upsample(blur_low, f, shape) & anat
        return Masks(anat, anon, False, "blurred", details, working)
    return Masks(anat, np.zeros(shape, bool), False, None, details, working)


def _refit_known(fit_shape, removed_low, la, world_to_template) -> np.ndarray:
    """The envelope fit again on all the head the image still shows (the
    face's sides, jaw and neck too, not only the cranium), started from the
    cranium fit: the anatomy around a removed zone places the missing part."""
    known = ~ndimage.binary_dilation(removed_low)
    return tpl_mod.refine(fit_shape, known, la, world_to_template)


def _smooth_envelope(shape, affine, world_to_template, zone, grow: int = 8) -> np.ndarray:
    """The fitted head at full resolution (template fraction > 0.5, linear),
    in the bounding box of `zone` grown by `grow` voxels; False elsewhere."""
    out = np.zeros(shape, bool)
    if not zone.any():
        return out
    idx = [np.flatnonzero(zone.any(axis=tuple(b for b in range(3) if b != a))) for a in range(3)]
    box = tuple(
        slice(max(int(i[0]) - grow, 0), min(int(i[-1]) + grow + 1, n))
        for i, n in zip(idx, shape, strict=True)
    )
    head = tpl_mod.labels_on(shape, affine, world_to_template, ("head",), box)["head"]
    out[box] = head > 0.5
    return out


def _box_of(mask: np.ndarray) -> np.ndarray:
    """The bounding box of `mask`, filled."""
    out = np.zeros(mask.shape, bool)
    if mask.any():
        idx = np.argwhere(mask)
        out[tuple(slice(a, b + 1) for a, b in zip(idx.min(0), idx.max(0), strict=True))] = True
    return out
