"""Anatomy and anonymization masks on real heads changed by real tools.

The heads (`tests/realheads.py`) are pydeface's average real head, warped by
a random smooth field, rescaled, reposed and resampled onto two scanner-like
grids (one of them sagittal-last with flipped axes), with Rician noise. Each
is then left intact, defaced with pydeface's own face mask (warped with the
head), cut by quickshear, face-blurred, or skull-stripped. The truths come
from the noise-free warped head (its anatomy: 10% of its 99th percentile,
holes filled), never from the code under test, and the template the code fits
is the unwarped mean head, so no case grades the template against itself.

Floors are set a little under the measured figures (docs/benchmarks.md, masks),
which `python benchmarks/masks_real_heads.py` prints. The issue's goal of
anonymization Dice >= 0.9 is met by pydeface and, on one warp of two, by the
blurred face; quickshear's thin cut (0.85-0.87) and the other blurred face
(0.89) fall short: the outer surface of a removed face is the fitted
template's, and an affine fit misses a smooth warp there by 1-2 mm.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from realheads import WARPS, real_heads
from scipy import ndimage

from openmind_curate.masks.compute import compute_masks
from openmind_curate.masks.template import HEAD, pydeface_data, template_labels

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:quickshear")

#: Anonymization Dice floors per case (measured: docs/benchmarks.md).
ANON_FLOOR = {"pydeface": 0.9, "quickshear": 0.83, "blurred": 0.86, "skull-stripped": 0.88}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / max(np.count_nonzero(a) + np.count_nonzero(b), 1)


def _warp_results(warp) -> list:
    return [(case, compute_masks(case.data, case.affine)) for case in real_heads(warp)]


@pytest.fixture(scope="session")
def results():
    """(case, masks) for every case of every warp, built once: one thread per
    warp (each draws from its own seeded generator; numpy and scipy release
    the GIL), which halves the 20 s this costs on two cores. The template is
    loaded (or built and cached) first, once."""
    template_labels()
    with ThreadPoolExecutor(max_workers=len(WARPS)) as pool:
        return [pair for pairs in pool.map(_warp_results, WARPS) for pair in pairs]


def _tool(case) -> str:
    return case.name.split("-", 1)[1]


def test_every_case_is_there_and_not_trivial(results):
    tools = [_tool(c) for c, _ in results]
    assert tools.count("intact") == len(WARPS)
    for tool in ("pydeface", "quickshear", "blurred", "skull-stripped"):
        assert tools.count(tool) == len(WARPS), tool
    for case, _ in results:
        voxel_ml = abs(float(np.linalg.det(case.affine[:3, :3]))) / 1000
        if case.kind is not None:
            assert case.removed.sum() * voxel_ml > 50, case.name  # at least 50 mL removed


def test_test_heads_are_warped_not_the_template(results):
    """The truth head differs from the template's own head on the same grid."""
    bits, tpl_affine = template_labels()
    for case, _ in results[:: len(results) // len(WARPS)]:
        m = np.linalg.inv(tpl_affine) @ case.affine
        unwarped = (
            ndimage.affine_transform(
                ((bits & HEAD) > 0).astype(np.float32),
                m[:3, :3],
                m[:3, 3],
                output_shape=case.head.shape,
                order=1,
            )
            > 0.5
        )
        assert dice(unwarped, case.head) < 0.95, case.name
    assert pydeface_data("mean_reg2mean.nii.gz").shape == bits.shape


def test_anonymization_kind_and_brain_extraction(results):
    for case, masks in results:
        assert masks.anonymization_kind == case.kind, case.name
        assert masks.is_brain_extracted == (case.kind == "skull-stripped"), case.name


def test_anonymization_dice(results):
    for case, masks in results:
        if case.kind is None:
            continue
        score = dice(masks.anonymization, case.removed)
        assert score >= ANON_FLOOR[_tool(case)], (case.name, score)


def test_intact_heads_flag_almost_nothing(results):
    for case, masks in results:
        if case.kind is None:
            flagged = masks.anonymization.sum() / case.head.sum()
            assert flagged < 0.005, (case.name, flagged)


def test_anatomy_dice(results):
    for case, masks in results:
        score = dice(masks.anatomy, case.anatomy)
        assert score >= 0.95, (case.name, score)


def test_never_swapped(results):
    """A removed face or scalp is not anatomy, and the anonymization mask is
    not the head. A blurred face still carries signal, so by the contract it
    stays in the anatomy: there the check is that the flagged voxels are the
    face (precision) and a small part of the head."""
    for case, masks in results:
        if case.kind is None:
            continue
        removed = case.removed
        inside = np.count_nonzero(masks.anatomy & removed) / np.count_nonzero(removed)
        if case.kind == "blurred":
            precision = np.count_nonzero(masks.anonymization & removed) / max(
                np.count_nonzero(masks.anonymization), 1
            )
            assert precision > 0.8, (case.name, precision)
            assert masks.anonymization.sum() < 0.25 * masks.anatomy.sum(), case.name
        else:
            assert inside < 0.02, (case.name, inside)
            assert not (masks.anatomy & masks.anonymization).any(), case.name
