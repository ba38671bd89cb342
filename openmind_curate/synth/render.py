"""Render a contrast from the head model and resample it onto a scanner grid.

Intensities per tissue are relative values chosen to match the usual look of
each contrast at 3 T (WM > GM > CSF on T1w, the reverse on T2w, dark CSF on
FLAIR, flat PDw). They are not a signal equation; what matters downstream is
that tissue contrast, background and anonymized regions behave like real data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from openmind_curate.synth.head import BIT_BRAIN, BIT_FACE, BIT_HEAD, LAYERS, HeadModel

# Tissue order: gm, wm, csf, then the non-brain layers in LAYERS order.
_TISSUES = ("gm", "wm", "csf", *[k for k in LAYERS if k != "intracranial"])
#: Relative intensity of each tissue (column) in each contrast (row).
_INTENSITIES = """
contrast  gm    wm    csf   air  skull  marrow  scalp  muscle  eye   sinus
T1w       0.55  0.85  0.15  0    0.05   0.6     0.95   0.4     0.12  0
T2w       0.6   0.42  1.0   0    0.04   0.45    0.65   0.3     0.95  0
FLAIR     0.7   0.5   0.06  0    0.04   0.5     0.75   0.35    0.05  0
PDw       0.85  0.7   0.92  0    0.05   0.7     0.85   0.55    0.9   0
T2starw   0.6   0.5   0.85  0    0.03   0.3     0.6    0.35    0.8   0
angio     0.25  0.2   0.1   0    0.03   0.3     0.4    0.2     0.1   0
UNIT1     0.45  0.7   0.15  0    0.1    0.5     0.6    0.4     0.15  0
b0        0.65  0.5   1.0   0    0.02   0.05    0.08   0.25    0.9   0
"""


def _intensity_table(text: str) -> dict[str, dict[str, float]]:
    """Contrast -> tissue -> intensity. The table is text so that its columns
    stay aligned and every contrast reads as one row."""
    header, *rows = (line.split() for line in text.strip().splitlines())
    assert tuple(header[1:]) == _TISSUES, header
    return {row[0]: dict(zip(_TISSUES, map(float, row[1:]), strict=True)) for row in rows}


CONTRASTS: dict[str, dict[str, float]] = _intensity_table(_INTENSITIES)
# MP2RAGE inversions and inplane T2 reuse a close relative.
CONTRASTS["MP2RAGE_inv1"] = {k: 0.9 - 0.8 * v for k, v in CONTRASTS["T1w"].items()}
CONTRASTS["MP2RAGE_inv1"].update(air=0, sinus=0)
CONTRASTS["MP2RAGE_inv2"] = dict(CONTRASTS["PDw"])
CONTRASTS["inplaneT2"] = dict(CONTRASTS["T2w"])


def render(model: HeadModel, contrast: str) -> np.ndarray:
    """The noiseless image of `contrast` on the model's 1 mm MNI grid."""
    table = CONTRASTS[contrast]
    lut = np.zeros(len(LAYERS), np.float32)
    for name, label in LAYERS.items():
        if name != "intracranial":
            lut[label] = table[name]
    out = lut[model.layer]
    out += table["gm"] * model.gm + table["wm"] * model.wm + table["csf"] * model.csf
    return out


@dataclass(frozen=True)
class Grid:
    """A scanner grid: array shape and voxel-to-world affine (world = subject mm)."""

    shape: tuple[int, ...]
    affine: np.ndarray

    @property
    def spacing(self) -> tuple[float, ...]:
        return tuple(float(s) for s in np.sqrt((self.affine[:3, :3] ** 2).sum(0)))


_AXES = {"R": (0, 1), "L": (0, -1), "A": (1, 1), "P": (1, -1), "S": (2, 1), "I": (2, -1)}


def rotation(degrees: tuple[float, float, float]) -> np.ndarray:
    """Rotation matrix for x, y, z Euler angles (degrees), applied x then y then z."""
    ax, ay, az = np.deg2rad(degrees)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def make_grid(
    bbox_world: tuple[np.ndarray, np.ndarray],
    spacing: tuple[float, float, float],
    axcodes: str = "RAS",
    oblique_deg: tuple[float, float, float] = (0.0, 0.0, 0.0),
    margin_mm: float = 8.0,
) -> Grid:
    """A grid whose array axes point along `axcodes` (e.g. "LAS", "PIR"),
    tilted by `oblique_deg`, covering the world box plus a margin."""
    perm = np.zeros((3, 3))
    for col, code in enumerate(axcodes):
        row, sign = _AXES[code]
        perm[row, col] = sign
    rot = rotation(oblique_deg) @ perm
    lo, hi = (np.asarray(b, float) for b in bbox_world)
    corners = np.array(
        [[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]
    )
    centre = (lo + hi) / 2
    along = (corners - centre) @ rot  # coordinates along each array axis
    extent = along.max(0) - along.min(0) + 2 * margin_mm
    shape = tuple(int(np.ceil(e / s)) for e, s in zip(extent, spacing, strict=True))
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag(spacing)
    affine[:3, 3] = centre - affine[:3, :3] @ ((np.array(shape) - 1) / 2)
    return Grid(shape, affine)


def resample(
    volume: np.ndarray,
    source_affine: np.ndarray,
    grid: Grid,
    subject_to_mni: np.ndarray,
    order: int = 1,
) -> np.ndarray:
    """Sample `volume` (on `source_affine`, MNI) at every voxel of `grid`.

    `subject_to_mni` maps the subject's world millimetres to MNI, so one model
    yields differently sized and posed heads.
    """
    m = np.linalg.inv(source_affine) @ subject_to_mni @ grid.affine
    return ndimage.affine_transform(
        volume, m[:3, :3], m[:3, 3], output_shape=grid.shape, order=order, mode="constant", cval=0
    )


def head_bbox_world(model: HeadModel, subject_to_mni: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World bounding box of the subject's head (the model's box, posed)."""
    lo, hi = model.bbox_mm()
    to_world = np.linalg.inv(subject_to_mni)
    corners = np.array(
        [[x, y, z, 1] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]
    )
    pts = (to_world @ corners.T).T[:, :3]
    return pts.min(0), pts.max(0)


def truth_masks(model: HeadModel, grid: Grid, subject_to_mni: np.ndarray) -> dict[str, np.ndarray]:
    """Head, brain and face-zone masks on `grid` (nearest neighbour, no blur)."""
    bits = resample(model.truth_bits, model.affine, grid, subject_to_mni, order=0)
    return {
        "head": (bits & BIT_HEAD) > 0,
        "brain": (bits & BIT_BRAIN) > 0,
        "face": (bits & BIT_FACE) > 0,
    }
