"""A whole-head model in MNI space, built from nilearn's MNI152 template.

nilearn ships the ICBM152 2009a T1 template (brain only) with its grey- and
white-matter probability maps. We keep those for the brain, derive CSF from the
brain mask, and add what anonymization acts on: extra-axial CSF, a three-layer
skull (inner table, marrow, outer table), scalp fat and skin, and a face
(soft tissue, eyes, nasal sinuses, nose, chin) and a short neck. The non-brain
parts are geometric (distance shells and ellipsoids in MNI millimetres), which
is enough to make defacing, skull stripping and field-of-view cuts remove real,
known voxels.

The model is built once (about 15 s), cached on disk (`cache_dir`), and
loaded once per process. It lives outside `synth` because production places
the anonymization template with it (`masks.template`), and production does not
import the generator.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from nilearn.datasets import (
    load_mni152_brain_mask,
    load_mni152_gm_template,
    load_mni152_template,
    load_mni152_wm_template,
)
from scipy import ndimage

from openmind_curate.atomic import atomic_path

log = logging.getLogger(__name__)

#: Labels of the non-brain layer map (`HeadModel.layer`); 0 = inside the skull.
LAYERS: dict[str, int] = {
    "intracranial": 0,
    "air": 1,
    "skull": 2,
    "marrow": 3,
    "scalp": 4,
    "muscle": 5,
    "eye": 6,
    "sinus": 7,
}

#: Bits of the truth label map (`HeadModel.truth_bits`).
BIT_HEAD, BIT_BRAIN, BIT_FACE = 1, 2, 4

# Ellipsoids (centre, radii) in MNI mm that shape the face and neck.
_FACE = ((0.0, 50.0, -45.0), (55.0, 45.0, 38.0))
_CHIN = ((0.0, 55.0, -75.0), (38.0, 30.0, 20.0))
_NOSE = ((0.0, 92.0, -28.0), (9.0, 14.0, 20.0))
_NECK = ((0.0, -15.0, -85.0), (48.0, 50.0, 30.0))
_EYES = (((-32.0, 62.0, -34.0), (12.0, 12.0, 12.0)), ((32.0, 62.0, -34.0), (12.0, 12.0, 12.0)))
_SINUS = ((0.0, 68.0, -50.0), (14.0, 12.0, 14.0))

#: Padding of the template grid (voxels, per axis and side) so the face, chin and
#: neck fit: anterior for the nose, inferior for chin and neck.
_PAD = ((6, 6), (4, 24), (50, 2))


@dataclass(frozen=True)
class HeadModel:
    """Tissue maps on a 1 mm MNI grid (`affine`). Brain maps are partial-volume
    probabilities; outside the skull each voxel has one `layer` label."""

    affine: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    layer: np.ndarray
    truth_bits: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.gm.shape

    def bbox_mm(self) -> tuple[np.ndarray, np.ndarray]:
        """Min and max MNI coordinates of the head."""
        idx = np.argwhere(self.truth_bits & BIT_HEAD)
        lo, hi = idx.min(0), idx.max(0)
        return _apply(self.affine, lo), _apply(self.affine, hi)


def _apply(affine: np.ndarray, ijk: np.ndarray) -> np.ndarray:
    return affine[:3, :3] @ np.asarray(ijk, float) + affine[:3, 3]


def _ellipsoid(mm: tuple[np.ndarray, ...], centre, radii) -> np.ndarray:
    return sum(((c - c0) / r) ** 2 for c, c0, r in zip(mm, centre, radii, strict=True)) <= 1.0


def _load_templates() -> tuple[np.ndarray, ...]:
    t1 = load_mni152_template(resolution=1)
    arrays = [
        np.asarray(img.get_fdata(dtype=np.float32))
        for img in (
            t1,
            load_mni152_gm_template(resolution=1),
            load_mni152_wm_template(resolution=1),
            load_mni152_brain_mask(resolution=1),
        )
    ]
    return t1.affine, *arrays


#: Bump when the construction below changes, so stale caches are not used.
MODEL_VERSION = 1


def cache_dir() -> Path:
    """Where the built model is cached (``$OPENMIND_CURATE_CACHE`` or ~/.cache)."""
    root = os.environ.get("OPENMIND_CURATE_CACHE") or Path.home() / ".cache" / "openmind-curate"
    return Path(root)


@functools.lru_cache(maxsize=1)
def head_model() -> HeadModel:
    """The whole-head model: loaded from the disk cache, else built (~15 s) and cached."""
    path = cache_dir() / f"head-model-v{MODEL_VERSION}.npz"
    try:
        with np.load(path) as z:
            return HeadModel(**{k: z[k] for k in HeadModel.__dataclass_fields__})
    except (OSError, KeyError, ValueError, EOFError):
        pass
    log.info("Building the whole-head model once (about 15 s); cached in %s", path)
    model = build_head_model()
    try:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **{k: getattr(model, k) for k in HeadModel.__dataclass_fields__})
    except OSError:
        pass  # a read-only home only costs a rebuild next time
    return model


def build_head_model() -> HeadModel:
    """Build the whole-head model from the templates (pure, deterministic)."""
    affine, t1, gm, wm, brain = _load_templates()
    pad = np.array(_PAD)
    gm, wm, t1, brain = (np.pad(a, _PAD) for a in (gm, wm, t1, brain))
    affine = affine.copy()
    affine[:3, 3] -= pad[:, 0] * np.diag(affine)[:3]
    brain = brain > 0.5
    # The template's own probabilities leave CSF implicit: what the brain mask
    # holds beyond GM + WM is CSF (sulci and ventricles).
    tissue = np.clip(gm + wm, 0.0, 1.0)
    gm = np.where(brain, gm / np.maximum(tissue, 1.0), 0.0).astype(np.float32)
    wm = np.where(brain, wm / np.maximum(tissue, 1.0), 0.0).astype(np.float32)

    dist_out_brain = ndimage.distance_transform_edt(~brain)
    # Intracranial volume: the brain closed over sulci plus a thin CSF rim.
    closed = ndimage.distance_transform_edt(dist_out_brain <= 8.0) > 5.0
    icv = ndimage.gaussian_filter(closed.astype(np.float32), 2.0) > 0.5
    icv |= brain
    csf = np.where(icv, 1.0 - gm - wm, 0.0).astype(np.float32)

    mm = np.meshgrid(
        *[affine[a, a] * np.arange(n) + affine[a, 3] for a, n in enumerate(gm.shape)],
        indexing="ij",
        sparse=True,
    )
    d_icv = ndimage.distance_transform_edt(~icv)
    head = d_icv <= 11.0
    for centre, radii in (_FACE, _CHIN, _NOSE, _NECK):
        head |= _ellipsoid(mm, centre, radii)
    head = ndimage.gaussian_filter(head.astype(np.float32), 2.5) > 0.5
    head = ndimage.binary_fill_holes(head)
    d_out = ndimage.distance_transform_edt(head)

    layer = np.full(gm.shape, LAYERS["air"], np.uint8)
    layer[head] = LAYERS["muscle"]
    layer[head & (d_out <= 5.0)] = LAYERS["scalp"]
    bone = (d_icv > 0) & (d_icv <= 6.5) & (d_out > 3.0)
    layer[bone] = LAYERS["skull"]
    layer[bone & (d_icv > 2.0) & (d_icv <= 4.5)] = LAYERS["marrow"]
    for centre, radii in _EYES:
        layer[_ellipsoid(mm, centre, radii) & head & ~icv] = LAYERS["eye"]
    layer[_ellipsoid(mm, *_SINUS) & head & ~icv] = LAYERS["sinus"]
    layer[icv] = LAYERS["intracranial"]

    # The face zone a defacing tool removes: anterior-inferior to a plane under
    # the frontal lobe, never closer than 4 mm to the intracranial volume.
    y, z = mm[1], mm[2]
    face = (y - 0.8 * z > 68.0) & (d_icv > 4.0) & head
    bits = (
        head.astype(np.uint8) * BIT_HEAD
        + brain.astype(np.uint8) * BIT_BRAIN
        + face.astype(np.uint8) * BIT_FACE
    )
    return HeadModel(affine, gm, wm, csf, layer, bits)
