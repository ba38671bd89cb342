"""SimCLR: its positives are two overlapping views of one crop, NT-Xent has
its known value, the augmentations are reproducible per sample and leave the
global generators alone, and the tiny networks train."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from openmind_curate.errors import InputError
from openmind_curate.train.methods.base import StepContext
from openmind_curate.train.methods.bg_augment import augment
from openmind_curate.train.methods.simclr import (
    VIEW_SALT,
    SimCLR,
    SimCLRParams,
    nt_xent,
    view_corners,
)

CROP = (64, 64, 32)
SMALL = SimCLRParams(crop=CROP, proj_hidden=32, proj_out=16)


def ctx(step: int = 0, seed: int = 7) -> StepContext:
    return StepContext(step=step, seed=seed, device=torch.device("cpu"))


def batch(n: int = 3, indices=None) -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        "image": torch.randn(n, 1, *CROP, generator=g),
        "anat": torch.ones(n, 1, *CROP),
        "anon": torch.zeros(n, 1, *CROP),
        "case_id": [f"c{i}" for i in range(n)],
        "index": list(indices if indices is not None else range(10, 10 + n)),
    }


def test_positives_are_two_overlapping_views_of_one_crop():
    method = SimCLR(SimCLRParams(crop=CROP, augment=False), "tiny", 32)
    b = batch()
    out = method.prepare(b, ctx())
    assert out["views"].shape == (3, 2, 1, 32, 32, 32)
    assert "image" not in out  # the full crops never reach the device
    for i in range(3):
        (x0, y0, z0), (x1, y1, z1) = out["view_at"][i].tolist()
        # each view is a cut of this sample's own crop, at its recorded corner
        assert torch.equal(
            out["views"][i, 0], b["image"][i, :, x0 : x0 + 32, y0 : y0 + 32, z0 : z0 + 32]
        )
        assert torch.equal(
            out["views"][i, 1], b["image"][i, :, x1 : x1 + 32, y1 : y1 + 32, z1 : z1 + 32]
        )
        # the shared volume, by hand: (32 - |dx|)(32 - |dy|)(32 - |dz|) of 32^3
        shared = (32 - abs(x0 - x1)) * (32 - abs(y0 - y1)) * (32 - abs(z0 - z1))
        assert shared / 32**3 >= 0.5
    # many draws: always >= 50%, inside the crop, and not all at one place
    seen = set()
    for s in range(300):
        at = view_corners(np.random.default_rng(s), (192, 192, 64), 64, 0.5)
        assert (at >= 0).all() and (at + 64 <= np.array([192, 192, 64])).all()
        d = np.abs(at[0] - at[1])
        assert np.prod(64 - d) / 64**3 >= 0.5
        seen.add(tuple(d))
    assert len(seen) > 100


def test_nt_xent_known_value():
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z2 = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    # unit vectors a=(1,0), b=(0,1), c=(1,1)/sqrt2, d=(0,1); pairs a-c and b-d;
    # cos: ab 0, ac r, ad 0, bc r, bd 1, cd r (r = 1/sqrt2); logits = cos / 0.5
    r = 1 / math.sqrt(2)
    e = math.exp
    la = -math.log(e(2 * r) / (e(0) + e(2 * r) + e(0)))
    lb = -math.log(e(2) / (e(0) + e(2 * r) + e(2)))
    lc = -math.log(e(2 * r) / (3 * e(2 * r)))
    ld = -math.log(e(2) / (e(0) + e(2) + e(2 * r)))
    want = (la + lb + lc + ld) / 4
    assert nt_xent(z1, z2, 0.5).item() == pytest.approx(want, abs=1e-6)
    # a scale of a vector changes nothing (cosine similarity)
    assert nt_xent(3 * z1, z2, 0.5).item() == pytest.approx(want, abs=1e-6)


def test_augmentations_reproducible_per_sample_and_globals_untouched():
    method = SimCLR(SMALL, "tiny", 32)
    b = batch()
    random.seed(1)
    np.random.seed(1)  # noqa: NPY002
    torch.manual_seed(1)
    states = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state())  # noqa: NPY002
    first = method.prepare(b, ctx())["views"]
    assert random.getstate() == states[0]
    assert np.array_equal(np.random.get_state()[1], states[1])  # noqa: NPY002
    assert torch.equal(torch.get_rng_state(), states[2])
    assert torch.equal(method.prepare(b, ctx())["views"], first)
    # a sample's views depend on (seed, step, index), not on its place in the batch
    flipped = {**b, "image": b["image"].flip(0), "index": b["index"][::-1]}
    assert torch.equal(method.prepare(flipped, ctx())["views"].flip(0), first)
    assert not torch.equal(method.prepare(b, ctx(step=1))["views"], first)
    assert not torch.equal(method.prepare(b, ctx(seed=8))["views"], first)
    # each view is the augmented cut drawn from its own seed
    plain = SimCLR(SimCLRParams(crop=CROP, augment=False), "tiny", 32).prepare(b, ctx())
    c = ctx()
    for i, index in enumerate(b["index"]):
        for k in range(2):
            want = augment(plain["views"][i, k], c.seed_of(index, VIEW_SALT + k))
            assert torch.equal(first[i, k], want)
    assert not torch.equal(first, plain["views"])


def test_recipe_and_check():
    r = SimCLR.recipe("resenc")
    assert (r.global_batch, r.patch, r.optimizer, r.lr, r.weight_decay) == (
        32,
        64,
        "sgd",
        1e-2,
        3e-5,
    )
    assert SimCLR.recipe("primus").optimizer == "adamw"
    assert SimCLR(SimCLRParams(), "resenc-l", 64).crop() == (192, 192, 64)
    with pytest.raises(InputError, match="crop"):
        SimCLR(SimCLRParams(crop=(64, 64, 16)), "tiny", 32).check()
    with pytest.raises(InputError, match="min_overlap"):
        SimCLR(SimCLRParams(min_overlap=0.0), "tiny", 32).check()


DDP_SCRIPT = """
import json, sys
import torch, torch.distributed as dist
from torch import nn
from openmind_curate.train.methods.base import StepContext
from openmind_curate.train.methods.simclr import SimCLR, SimCLRParams

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(4**3, 3))
views = torch.randn(4, 2, 1, 4, 4, 4, generator=torch.Generator().manual_seed(1))
method = SimCLR(SimCLRParams(crop=(4, 4, 4)), "tiny", 4)
ddp = nn.parallel.DistributedDataParallel(net())
ctx = StepContext(step=0, seed=0, device=torch.device("cpu"), rank=rank, world=world)
loss = method.loss(ddp, {"views": views[2 * rank : 2 * rank + 2]}, ctx)
loss.backward()
out = {"loss": loss.item(), "grad": ddp.module[1].weight.grad.flatten().tolist()}
if rank == 0:
    one = net()
    solo = StepContext(step=0, seed=0, device=torch.device("cpu"))
    full = method.loss(one, {"views": views}, solo)
    full.backward()
    out["full_loss"] = full.item()
    out["full_grad"] = one[1].weight.grad.flatten().tolist()
json.dump(out, open(sys.argv[1] + f"/rank{rank}.json", "w"))
dist.destroy_process_group()
"""


def test_ddp_gathers_negatives_from_every_rank(tmp_path):
    """2 gloo ranks with 2 samples each give the loss and the (DDP-averaged)
    gradient of one process with all 4: every view's negatives span the
    global batch."""
    import json
    import subprocess
    import sys

    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    subprocess.run([*cmd, str(script), str(tmp_path)], check=True, capture_output=True, timeout=120)
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0["loss"] == pytest.approx(r0["full_loss"], rel=1e-5)
    assert r1["loss"] == pytest.approx(r0["full_loss"], rel=1e-5)
    assert r0["grad"] == pytest.approx(r0["full_grad"], rel=1e-4, abs=1e-6)
    assert r1["grad"] == pytest.approx(r0["full_grad"], rel=1e-4, abs=1e-6)
