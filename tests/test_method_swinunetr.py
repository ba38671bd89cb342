"""SwinUNETR pretext: rotation labels match the rotations, cut-outs change
exactly their boxes and at most 60%, the in-painting loss skips defaced
voxels, NT-Xent has its hand-computed value, draws are reproducible, and the
network trains on both tiny archs with only the backbone exported."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from openmind_curate.train import models
from openmind_curate.train.methods.base import StepContext
from openmind_curate.train.methods.swinunetr import (
    SwinUNETR,
    SwinUNETRParams,
    box_mask,
    inpaint_loss,
    nt_xent,
    view_draws,
)

P = 32


def _ctx(step: int = 3, anon_aware: bool = False) -> StepContext:
    return StepContext(step=step, seed=11, device=torch.device("cpu"), anon_aware=anon_aware)


def _batch(b: int = 4) -> dict:
    gen = torch.Generator().manual_seed(0)
    shape = (b, 1, P, P, P)
    anon = torch.zeros(shape)
    anon[:, :, :, :4] = 1  # defaced: the first rows of H, so rotations move it
    return {
        "image": torch.randn(shape, generator=gen),
        "anat": torch.ones(shape),
        "anon": anon,
        "case_id": [f"c{i}" for i in range(b)],
        "index": list(range(b)),
    }


def _method(arch: str = "tiny") -> SwinUNETR:
    m = SwinUNETR(SwinUNETRParams(), arch, P)
    m.check()
    return m


def test_rotation_labels_match_the_rotations():
    """An asymmetric volume: label k is torch.rot90 by k in (H, W), about z."""
    vol = torch.arange(P**3, dtype=torch.float32).view(1, P, P, P)
    turns = [torch.rot90(vol, k, dims=(2, 3)) for k in range(4)]
    assert all(not torch.equal(turns[a], turns[b]) for a in range(4) for b in range(a))
    batch = _batch(8)
    batch["image"] = vol.expand(8, 1, P, P, P).clone()
    seen = set()
    for step in range(2):
        out = _method().prepare(batch, _ctx(step, anon_aware=True))
        for i in range(8):
            for v in range(2):
                k = int(out["rotations"][i, v])
                seen.add(k)
                assert torch.equal(out["targets"][i, v : v + 1], turns[k])
                assert torch.equal(
                    out["anon_views"][i, v : v + 1], torch.rot90(batch["anon"][i], k, dims=(2, 3))
                )
    assert seen == {0, 1, 2, 3}


def test_cutouts_change_exactly_the_drawn_boxes_and_at_most_60_percent():
    m = _method()
    batch = _batch(4)
    fractions = []
    for step in range(6):
        ctx = _ctx(step)
        out = m.prepare(batch, ctx)
        for i, g in enumerate(batch["index"]):
            for v in range(2):
                _, noise, copied = view_draws(ctx.rng(g, salt=v), (P, P, P), m.params, True)
                boxes = box_mask((P, P, P), noise + copied)
                changed = out["views"][i, v] != out["targets"][i, v]
                assert torch.equal(changed, boxes)
                frac = boxes.float().mean().item()
                assert frac <= 0.6
                assert sum(math.prod(b - a for a, b in box) for box in noise) <= 0.3 * P**3
                assert sum(math.prod(b - a for a, b in box) for box in copied) <= 0.3 * P**3
                fractions.append(frac)
    assert max(fractions) > 0.3  # the second pass adds to the first


def test_copied_boxes_come_from_the_pair():
    m = _method()
    batch = _batch(2)
    ctx = _ctx()
    out = m.prepare(batch, ctx)
    _, noise, copied = view_draws(ctx.rng(0, salt=0), (P, P, P), m.params, True)
    only_copied = box_mask((P, P, P), copied) & ~box_mask((P, P, P), noise)
    assert only_copied.any()
    assert torch.equal(out["views"][0, 0][only_copied], out["targets"][1, 0][only_copied])


def test_inpaint_loss_has_no_gradient_on_defaced_voxels():
    gen = torch.Generator().manual_seed(1)
    target = torch.randn(2, 1, 8, 8, 8, generator=gen)
    anon = torch.zeros_like(target)
    anon[:, :, :3] = 1
    rec = torch.randn(2, 1, 8, 8, 8, generator=gen, requires_grad=True)
    inpaint_loss(rec, target, anon).backward()
    assert (rec.grad[anon == 1] == 0).all()
    assert (rec.grad[anon == 0] != 0).all()
    rec.grad = None
    inpaint_loss(rec, target, None).backward()  # nnssl: L1 over every voxel
    assert (rec.grad != 0).all()
    want = (rec - target).abs().mean()
    assert inpaint_loss(rec, target, None).item() == pytest.approx(want.item())


def test_nt_xent_known_value():
    """Two crops with orthogonal embeddings, identical views, t = 0.5: each row
    has the positive at cosine 1 and two negatives at 0: -2 + log(2 + e^2)."""
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert nt_xent(z, z, 0.5).item() == pytest.approx(-2 + math.log(2 + math.e**2), rel=1e-6)
    # swapping the second views makes the positives orthogonal: the loss grows
    assert nt_xent(z, z.flip(0), 0.5).item() > nt_xent(z, z, 0.5).item()


def test_reproducible():
    m = _method()
    a = m.prepare(_batch(), _ctx())
    b = m.prepare(_batch(), _ctx())
    for key in ("views", "targets", "rotations"):
        assert torch.equal(a[key], b[key])
    c = m.prepare(_batch(), _ctx(step=4))
    assert not torch.equal(a["views"], c["views"])


def test_draws_end_a_pass_within_budget():
    p = SwinUNETRParams()
    for s in range(50):
        _, noise, copied = view_draws(np.random.default_rng(s), (P, P, P), p, True)
        assert box_mask((P, P, P), noise + copied).float().mean() <= 0.6


@pytest.mark.parametrize("arch", ["tiny", "tiny-primus"])
def test_build_and_loss(arch):
    torch.manual_seed(0)
    m = _method(arch)
    net = m.build()
    ctx = _ctx(anon_aware=True)
    batch = m.prepare(_batch(2), ctx)
    rec, rot, emb = net(batch["views"][:, 0:1])
    assert rec.shape == (2, 1, P, P, P) and rot.shape == (2, 4) and emb.shape == (2, 512)
    loss = m.loss(net, batch, ctx)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    backbone = m.export(net)
    assert backbone is net.backbone
    names = {n.split(".")[0] for n, _ in backbone.named_parameters()}
    assert not names & {"rotation", "contrast", "reconstruct"}
    assert models.encoder_state(backbone)


DDP_SCRIPT = """
import json, sys
import torch, torch.distributed as dist
from torch import nn
from openmind_curate.train.methods.base import StepContext
from openmind_curate.train.methods.swinunetr import SwinUNETR, SwinUNETRParams

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.rec = nn.Conv3d(1, 1, 1)
        self.rot = nn.Linear(4**3, 4)
        self.emb = nn.Linear(4**3, 3)
    def forward(self, x):
        flat = x.flatten(1)
        return self.rec(x), self.rot(flat), self.emb(flat)

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
def net():
    torch.manual_seed(0)
    return Net()
g = torch.Generator().manual_seed(1)
batch = {
    "views": torch.randn(4, 2, 4, 4, 4, generator=g),
    "targets": torch.randn(4, 2, 4, 4, 4, generator=g),
    "rotations": torch.randint(0, 4, (4, 2), generator=g),
}
part = {k: v[2 * rank : 2 * rank + 2] for k, v in batch.items()}
method = SwinUNETR(SwinUNETRParams(), "tiny", 4)
ddp = nn.parallel.DistributedDataParallel(net())
ctx = StepContext(step=0, seed=0, device=torch.device("cpu"), rank=rank, world=world)
loss = method.loss(ddp, part, ctx)
loss.backward()
out = {"loss": loss.item(), "grad": [p.grad.flatten().tolist() for p in ddp.module.parameters()]}
if rank == 0:
    one = net()
    full = method.loss(one, batch, StepContext(step=0, seed=0, device=torch.device("cpu")))
    full.backward()
    out["full_loss"] = full.item()
    out["full_grad"] = [p.grad.flatten().tolist() for p in one.parameters()]
json.dump(out, open(sys.argv[1] + f"/rank{rank}.json", "w"))
dist.destroy_process_group()
"""


def test_ddp_gives_the_whole_batch_gradient(tmp_path):
    """2 gloo ranks with 2 crops each give the (DDP-averaged) gradient of one
    process with all 4: the per-rank in-painting and rotation terms average
    over the ranks, the contrast term's negatives (gathered, rank-major) span
    the global batch and each view's positive is its own crop's other view."""
    import json
    import subprocess
    import sys

    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    subprocess.run([*cmd, str(script), str(tmp_path)], check=True, capture_output=True, timeout=120)
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert (r0["loss"] + r1["loss"]) / 2 == pytest.approx(r0["full_loss"], rel=1e-5)
    for r in (r0, r1):
        for got, want in zip(r["grad"], r0["full_grad"], strict=True):
            assert got == pytest.approx(want, rel=1e-4, abs=1e-6)
