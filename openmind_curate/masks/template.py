"""The head envelope: a real average head with a face zone, fitted to an image.

Why a registered template and not a geometric model fitted to the foreground.
What anonymization removes is, by definition, missing from the image: a
defaced head has no face to fit an ellipsoid or a convex hull to, and a
skull-stripped image has no head at all. A hull of what remains cuts the
face off (measured: Dice 0.3 to 0.7 against the true defaced zone). A template
brings the missing anatomy with it, and an affine fit needs only what is left:
we fit on the cranium (the template's head above the skull base, away from the
face zone), which every defaced image keeps, or on the brain when the image is
skull-stripped. The data then decide each voxel (`masks.anonymization`); the
template only says where a face or a head would have been.

The template is pydeface's (MIT licence, a dependency; its defacing needs FSL,
so only its data files are used): `mean_reg2mean.nii.gz`, an average of real
heads (176x256x256, about 1 mm), and `facemask.nii.gz` on the same grid, 0 in
the zone pydeface removes. pydeface pulls in nipype (pure Python). The
real-head tests also cut heads with quickshear (BSD licence, a dev
dependency). From pydeface's files:

- head: the mean head above 10% of its 99th percentile (air is below 2%, the
  scalp near 60%), closed, holes filled, largest component;
- face: the head where the face mask is 0;
- brain: nilearn's MNI152 brain mask carried in by fitting our whole-head
  model (`openmind_curate.headmodel`, built on that MNI152 brain) to the
  mean head's shape, with the fit below (binary shapes, cranium only);
- cranium: the head more than 30 mm above the bottom of the brain and more
  than 6 mm from the face zone;
- upper head: the head down to 45 mm below the bottom of the brain, the
  head assumed around a skull-stripped brain (the mean head's neck runs on
  to the edge of its field of view, which says nothing about other scans).

These are built once (about 15 s) and cached under `headmodel.cache_dir()`.
The fit is 12-parameter affine on binary shapes, so contrast, bias and noise
do not matter. It costs about 0.15 s per image at 4 mm.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from importlib.resources import files

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from openmind_curate.atomic import atomic_path
from openmind_curate.headmodel import BIT_BRAIN, BIT_HEAD, cache_dir, head_model
from openmind_curate.masks.anatomy import clean
from openmind_curate.masks.grid import block_mean, low_affine
from openmind_curate.nifti_io import to_sitk

log = logging.getLogger(__name__)

_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])

#: Template resolution (mm) for the fit, and for the labels mapped back.
FIT_MM = 4.0
LABEL_MM = 2.0

#: Bits of the cached label map.
HEAD, FACE, BRAIN, CRANIUM, UPPER_HEAD = 1, 2, 4, 8, 16

#: Bump when the construction below changes, so stale caches are not used.
TEMPLATE_VERSION = 2

#: Head threshold as a fraction of the mean head's 99th percentile.
HEAD_FRACTION = 0.1
FACE_MARGIN_MM = 6.0
SKULL_BASE_MM = 30.0  # above the brain's bottom: the cranium's lower limit
NECK_MM = 45.0  # below the brain's bottom: how much neck a skull-stripped head is given


@dataclass(frozen=True)
class Template:
    """Fractions of head, face zone, brain and cranium on a grid (`affine`, RAS mm)."""

    affine: np.ndarray
    head: np.ndarray
    face: np.ndarray
    brain: np.ndarray
    cranium: np.ndarray  # the head above the skull base, away from the face zone
    upper_head: np.ndarray  # the head down to NECK_MM below the brain (the mean head's
    # neck runs on to its field of view's edge, an accident of that field of view)


def pydeface_data(name: str) -> nib.Nifti1Image:
    """One of pydeface's data files (``mean_reg2mean.nii.gz``, ``facemask.nii.gz``)."""
    return nib.load(str(files("pydeface") / "data" / name))


@functools.lru_cache(maxsize=1)
def template_labels() -> tuple[np.ndarray, np.ndarray]:
    """The label bits (uint8) on pydeface's 1 mm grid and its affine: from the
    disk cache, else built and cached."""
    path = cache_dir() / f"head-template-v{TEMPLATE_VERSION}.npz"
    try:
        with np.load(path) as z:
            return z["bits"], z["affine"]
    except (OSError, KeyError, ValueError, EOFError):
        pass
    log.info("Building the head template once (about 15 s); cached in %s", path)
    bits, affine = build_template_labels()
    try:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, bits=bits, affine=affine)
    except OSError:
        pass  # a read-only cache only costs a rebuild next time
    return bits, affine


def build_template_labels() -> tuple[np.ndarray, np.ndarray]:
    """Head, face, brain and cranium bits on pydeface's grid (pure, deterministic)."""
    img = pydeface_data("mean_reg2mean.nii.gz")
    mean = np.asarray(img.dataobj, dtype=np.float32)
    affine = img.affine
    keep = np.asarray(pydeface_data("facemask.nii.gz").dataobj) > 0.5
    head = clean(mean > HEAD_FRACTION * float(np.percentile(mean, 99)))
    face = head & ~keep
    brain = _brain_from_model(head, affine)
    z_mm = _world_z(affine, head.shape)
    bottom = float(np.percentile(z_mm[brain], 0.5))
    margin = ndimage.distance_transform_edt(~face, sampling=np.abs(np.diag(affine)[:3]))
    cranium = head & (margin > FACE_MARGIN_MM) & (z_mm > bottom + SKULL_BASE_MM)
    upper = head & (z_mm > bottom - NECK_MM)
    bits = (
        (head * np.uint8(HEAD) + face * np.uint8(FACE) + brain * np.uint8(BRAIN))
        + cranium * np.uint8(CRANIUM)
        + upper * np.uint8(UPPER_HEAD)
    )
    return bits.astype(np.uint8), affine


def _world_z(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    i, j, k = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return (affine[2, 0] * i + affine[2, 1] * j + affine[2, 2] * k + affine[2, 3]).astype(
        np.float32
    )


def _brain_from_model(head: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The MNI152 brain placed in the mean head: our whole-head model (MNI
    space) fitted to the mean head's shape on its cranium, then its brain
    sampled through that fit."""
    model = head_model()
    f = int(round(FIT_MM))
    bits = model.truth_bits
    model_head = (bits & BIT_HEAD) > 0
    z_mm = _world_z(model.affine, model_head.shape)
    model_cranium = model_head & (z_mm > -40.0)  # MNI: above the skull base
    m_aff = low_affine(model.affine, (f, f, f))
    fixed_f = tuple(max(1, int(round(FIT_MM / s))) for s in np.abs(np.diag(affine)[:3]))
    world_to_model = _register(
        block_mean(head, fixed_f),
        low_affine(affine, fixed_f),
        block_mean(model_head, (f, f, f)),
        m_aff,
        block_mean(model_cranium, (f, f, f)) > 0.5,
    )
    m = np.linalg.inv(model.affine) @ world_to_model @ affine
    brain = ndimage.affine_transform(
        ((bits & BIT_BRAIN) > 0).astype(np.float32),
        m[:3, :3],
        m[:3, 3],
        output_shape=head.shape,
        order=1,
    )
    return (brain > 0.5) & head


@functools.lru_cache(maxsize=4)
def template(mm: float) -> Template:
    """The template at `mm` (an integer multiple of its 1 mm grid)."""
    bits, affine = template_labels()
    f = int(round(mm))
    factors = (f, f, f)
    return Template(
        low_affine(affine, factors),
        *(block_mean((bits & b) > 0, factors) for b in (HEAD, FACE, BRAIN, CRANIUM, UPPER_HEAD)),
    )


def fit(shape_prob: np.ndarray, affine: np.ndarray, target: str = "head") -> np.ndarray:
    """The affine (4x4, RAS) taking image world mm to template world mm.

    `shape_prob` is the image's foreground (0..1) on `affine`; `target` is
    ``head`` (fit the cranium) or ``brain`` (fit the brain, for skull-stripped
    images and DWI maps).
    """
    tpl = template(FIT_MM)
    if target == "brain":
        return _register(shape_prob, affine, tpl.brain, tpl.affine, None)
    return _register(shape_prob, affine, tpl.head, tpl.affine, tpl.cranium > 0.5)


def _register(
    fixed_arr: np.ndarray,
    fixed_affine: np.ndarray,
    moving_arr: np.ndarray,
    moving_affine: np.ndarray,
    moving_mask: np.ndarray | None,
    fixed_mask: np.ndarray | None = None,
    start: np.ndarray | None = None,
) -> np.ndarray:
    """Affine fit of two binary shapes (mean squares), as a RAS fixed -> moving
    matrix, from `start` (a RAS matrix) or a centroid-and-top guess."""
    fixed = to_sitk(fixed_arr.astype(np.float32), fixed_affine)
    moving = to_sitk(moving_arr.astype(np.float32), moving_affine)
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMeanSquares()
    if moving_mask is not None:
        reg.SetMetricMovingMask(to_sitk(moving_mask.astype(np.uint8), moving_affine) > 0)
    if fixed_mask is not None:
        reg.SetMetricFixedMask(to_sitk(fixed_mask.astype(np.uint8), fixed_affine) > 0)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(0.25, 1)
    reg.SetInterpolator(sitk.sitkLinear)
    if start is None:
        init = _initial(fixed_arr, fixed_affine, moving_arr, moving_affine)
    else:
        init = _from_ras_matrix(start, fixed_arr, fixed_affine)
    reg.SetInitialTransform(init, inPlace=True)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0, minStep=1e-3, numberOfIterations=100, relaxationFactor=0.6
    )
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([2, 1])
    reg.SetSmoothingSigmasPerLevel([1.0, 0.0])
    reg.Execute(sitk.Cast(fixed, sitk.sitkFloat32), sitk.Cast(moving, sitk.sitkFloat32))
    return _to_ras_matrix(init)


def _initial(fixed: np.ndarray, fixed_affine: np.ndarray, moving: np.ndarray, moving_affine):
    """Start at the identity rotation with the shapes' centroids aligned in x
    and y and their tops in z: how much neck an image holds moves its centroid
    a lot and its top not at all (a cut vertex is left to the optimiser)."""
    fixed_pts = _points(np.argwhere(fixed > 0.5), fixed_affine)
    moving_pts = _points(np.argwhere(moving > 0.5), moving_affine)
    shift = np.empty(3)
    shift[:2] = moving_pts[:, :2].mean(0) - fixed_pts[:, :2].mean(0)
    shift[2] = np.percentile(moving_pts[:, 2], 99) - np.percentile(fixed_pts[:, 2], 99)
    t = sitk.AffineTransform(3)
    t.SetCenter(fixed_pts.mean(0).tolist())
    t.SetTranslation(shift.tolist())
    return t


def _from_ras_matrix(m: np.ndarray, fixed: np.ndarray, fixed_affine: np.ndarray):
    """A RAS 4x4 matrix as an ITK affine centred on the fixed shape."""
    lps = _LPS @ m @ _LPS
    a, b = lps[:3, :3], lps[:3, 3]
    c = _points(np.argwhere(fixed > 0.5), fixed_affine).mean(0)  # rotation and shift separate
    t = sitk.AffineTransform(3)
    t.SetMatrix(a.ravel().tolist())
    t.SetCenter(c.tolist())
    t.SetTranslation((b + a @ c - c).tolist())  # ITK: A (p - c) + c + t = A p + b
    return t


def _points(ijk: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Voxel indices -> LPS millimetres (ITK's frame)."""
    ras = ijk @ affine[:3, :3].T + affine[:3, 3]
    return ras * np.array([-1.0, -1.0, 1.0])


def _to_ras_matrix(t: sitk.AffineTransform) -> np.ndarray:
    """An ITK affine (LPS points, fixed -> moving) as a RAS 4x4 matrix."""
    a = np.array(t.GetMatrix()).reshape(3, 3)
    c = np.array(t.GetCenter())
    m = np.eye(4)
    m[:3, :3] = a
    m[:3, 3] = np.array(t.GetTranslation()) + c - a @ c
    return _LPS @ m @ _LPS


def labels_on(
    shape: tuple[int, ...],
    affine: np.ndarray,
    world_to_template: np.ndarray,
    names: tuple[str, ...] = ("head", "face", "brain"),
    box: tuple[slice, ...] | None = None,
) -> dict:
    """Template fractions (`names` of head, face, brain) sampled on an image
    grid, or on the part of it in `box` (slices with starts and stops)."""
    tpl = template(LABEL_MM)
    if box is not None:
        start = np.eye(4)
        start[:3, 3] = [b.start for b in box]
        affine = affine @ start
        shape = tuple(b.stop - b.start for b in box)
    m = np.linalg.inv(tpl.affine) @ world_to_template @ affine
    out = {}
    for name in names:
        out[name] = ndimage.affine_transform(
            getattr(tpl, name), m[:3, :3], m[:3, 3], output_shape=shape, order=1, cval=0.0
        )
    return out


def refine(
    shape_prob: np.ndarray, known: np.ndarray, affine: np.ndarray, world_to_template: np.ndarray
) -> np.ndarray:
    """The affine fit again, started from `world_to_template`, on the voxels
    the image still shows (`known`, a fixed-image mask): the whole head, not
    only the cranium, so the jaw and neck around a removed face place it."""
    tpl = template(FIT_MM)
    return _register(shape_prob, affine, tpl.head, tpl.affine, None, known, world_to_template)
