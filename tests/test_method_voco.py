"""VoCo: overlap targets are the geometric overlaps, the loss has its known
value on hand-made similarities, crops are reproducible, and the tiny
networks train."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from openmind_curate.errors import InputError
from openmind_curate.train.methods.base import StepContext
from openmind_curate.train.methods.voco import (
    VoCo,
    VoCoParams,
    base_corners,
    overlap_targets,
    voco_terms,
)

SMALL = VoCoParams(grid=(2, 2, 1), n_random=2, proj_hidden=32, proj_out=16)


def ctx(step: int = 0, seed: int = 3) -> StepContext:
    return StepContext(step=step, seed=seed, device=torch.device("cpu"))


def batch(n: int = 2) -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        "image": torch.randn(n, 1, 64, 64, 32, generator=g),
        "case_id": [f"c{i}" for i in range(n)],
        "index": list(range(5, 5 + n)),
    }


def test_overlap_targets_are_the_geometric_overlaps():
    bases = base_corners((2, 2, 1), 32)
    assert bases.tolist() == [[0, 0, 0], [0, 32, 0], [32, 0, 0], [32, 32, 0]]
    # a 32^3 crop at (27, 15, 0): x shares 5 voxels with the first base row and
    # 27 with the second, y 17 with the first column and 15 with the second
    got = overlap_targets(np.array([[27, 15, 0]]), bases, 32)
    want = [5 * 17 / 1024, 5 * 15 / 1024, 27 * 17 / 1024, 27 * 15 / 1024]
    assert got[0].tolist() == pytest.approx(want, abs=1e-12)
    # a 3x1x1 grid: a crop at x=40 misses the first base, shares 24 and 8 voxels
    far = overlap_targets(np.array([[40, 0, 0]]), base_corners((3, 1, 1), 32), 32)
    assert far[0].tolist() == pytest.approx([0.0, 24 / 32, 8 / 32], abs=1e-12)
    # the method's batch: targets of the recorded places, crops cut there
    method = VoCo(VoCoParams(grid=(2, 2, 1), n_random=3, augment=False), "tiny", 32)
    assert method.crop() == (64, 64, 32)
    b = batch()
    out = method.prepare(b, ctx())
    assert out["crops"].shape == (2, 7, 1, 32, 32, 32) and out["overlaps"].shape == (2, 3, 4)
    for i in range(2):
        for j, (x, y, z) in enumerate(bases.tolist()):
            assert torch.equal(
                out["crops"][i, j], b["image"][i, :, x : x + 32, y : y + 32, z : z + 32]
            )
        for k, (x, y, z) in enumerate(out["crop_at"][i].tolist()):
            assert torch.equal(
                out["crops"][i, 4 + k], b["image"][i, :, x : x + 32, y : y + 32, z : z + 32]
            )
            for j, (bx, by, bz) in enumerate(bases.tolist()):
                shared = (
                    max(0, 32 - abs(x - bx)) * max(0, 32 - abs(y - by)) * max(0, 32 - abs(z - bz))
                )
                assert out["overlaps"][i, k, j].item() == pytest.approx(shared / 32**3, abs=1e-7)
    assert out["overlaps"].sum(-1).numpy() == pytest.approx(np.ones((2, 3)), abs=1e-6)


def test_loss_zero_when_similarities_match_and_known_value():
    target = torch.tensor([[[0.75, 0.25, 0.0, 0.0]]])
    identity = torch.eye(4)[None]
    pred, reg = voco_terms(target.clone(), identity, target)
    assert abs(pred.item()) < 1e-5 and reg.item() == 0.0
    # hand-made similarities: relu -> (0.5, 0.25, 0.3, 0); base pairs upper triangle
    sims = torch.tensor([[[0.5, 0.25, 0.3, -0.2]]])
    base = torch.eye(4)
    upper = [0.2, -0.4, 0.6, 0.0, 0.1, 0.3]  # (0,1) (0,2) (0,3) (1,2) (1,3) (2,3)
    for v, (i, j) in zip(upper, [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)], strict=True):
        base[i, j] = base[j, i] = v
    pred, reg = voco_terms(sims, base[None], target)
    pos = (-math.log(1 - 0.25 + 1e-6) * 0.75 - math.log(1 - 0.0 + 1e-6) * 0.25) / 1.0
    neg = (0.3**2 + 0.0**2) / 2
    assert pred.item() == pytest.approx(pos + neg, abs=1e-6)
    assert reg.item() == pytest.approx((0.2 + 0.6 + 0.1 + 0.3) / 6, abs=1e-6)


def test_crops_reproducible_and_globals_untouched():
    method = VoCo(SMALL, "tiny", 32)
    b = batch()
    torch.manual_seed(1)
    np.random.seed(1)  # noqa: NPY002
    random.seed(1)
    states = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state())  # noqa: NPY002
    first = method.prepare(b, ctx())
    assert random.getstate() == states[0]
    assert np.array_equal(np.random.get_state()[1], states[1])  # noqa: NPY002
    assert torch.equal(torch.get_rng_state(), states[2])
    again = method.prepare(b, ctx())
    for key in ("crops", "overlaps", "crop_at"):
        assert torch.equal(again[key], first[key])
    other = method.prepare(b, ctx(step=1))
    assert not torch.equal(other["crop_at"], first["crop_at"])


def test_recipe_and_check():
    r = VoCo.recipe("resenc")
    assert (r.optimizer, r.lr, r.weight_decay, r.patch) == ("sgd", 1e-2, 3e-5, 64)
    assert VoCo(VoCoParams(), "resenc-l", 64).crop() == (256, 256, 64)
    VoCo(VoCoParams(), "resenc-l", 64).check()
    with pytest.raises(InputError, match="256 mm"):
        VoCo(VoCoParams(grid=(5, 4, 1)), "resenc-l", 64).check()
    with pytest.raises(InputError, match="256 mm"):
        VoCo(VoCoParams(), "resenc-l", 96).check()
