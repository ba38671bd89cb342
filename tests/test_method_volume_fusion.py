"""Volume Fusion: the labels are the coefficient map, the fusion is exact,
the draws are reproducible, and the network trains on both tiny archs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from openmind_curate.train.methods.base import StepContext, parse_params
from openmind_curate.train.methods.volume_fusion import (
    VolumeFusion,
    VolumeFusionParams,
    coefficient_labels,
    fusion_loss,
    paint_boxes,
    pair_positions,
)

P = 32


def _ctx(step: int = 3, seed: int = 7) -> StepContext:
    return StepContext(step=step, seed=seed, device=torch.device("cpu"))


def _batch(b: int = 4, first: int = 0) -> dict:
    gen = torch.Generator().manual_seed(0)
    shape = (b, 1, P, P, P)
    return {
        "image": torch.randn(shape, generator=gen),
        "anat": torch.ones(shape),
        "anon": torch.zeros(shape),
        "case_id": [f"c{i}" for i in range(b)],
        "index": list(range(first, first + b)),
    }


def _method(arch: str = "tiny") -> VolumeFusion:
    m = VolumeFusion(VolumeFusionParams(), arch, P)
    m.check()
    return m


def test_label_times_one_over_k_is_alpha_exactly():
    """Foreground 1 and background 0: the fused image is alpha itself."""
    m = _method()
    batch = _batch()
    batch["image"] = torch.stack([torch.full((1, P, P, P), float(i % 2)) for i in range(4)])
    out = m.prepare(batch, _ctx())
    label = out["label"]
    assert label.dtype == torch.uint8 and label.shape == (4, 1, P, P, P)
    assert int(label.max()) <= 4
    for i in range(4):
        alpha = out["image"][i] if i % 2 else 1 - out["image"][i]  # pair 0<->1, 2<->3
        assert torch.equal(label[i].float() * (1 / 4), alpha)
    assert set(torch.unique(label).tolist()) == {0, 1, 2, 3, 4}


def test_fused_image_is_alpha_fg_plus_one_minus_alpha_bg():
    m = _method()
    batch = _batch()
    out = m.prepare(batch, _ctx())
    image = batch["image"]
    for i, j in enumerate([1, 0, 3, 2]):
        alpha = out["label"][i].float() * (1 / 4)
        assert torch.equal(out["image"][i], alpha * image[i] + (1 - alpha) * image[j])
    assert torch.equal(batch["image"], image)  # the input batch is not changed in place


def test_boxes_are_painted_in_order():
    starts = np.array([[0, 0, 0], [1, 1, 1]])
    sizes = np.array([[2, 2, 2], [2, 2, 2]])
    got = paint_boxes((3, 3, 3), starts, sizes, np.array([3, 1]))
    want = np.zeros((3, 3, 3), np.uint8)
    want[:2, :2, :2] = 3
    want[1:, 1:, 1:] = 1
    assert np.array_equal(got, want)


def test_coefficient_map_box_sizes_follow_nnssl():
    """One box: its edges lie in 8 .. int(0.625 * 32) = 20 and its class covers it."""
    p = parse_params(VolumeFusionParams, ["boxes=1,1"], "volume-fusion")
    for s in range(20):
        lab = coefficient_labels(np.random.default_rng(s), (P, P, P), p)
        nz = np.argwhere(lab > 0)
        if len(nz):
            edges = nz.max(0) - nz.min(0) + 1
            assert ((edges >= 8) & (edges <= 20)).all()
            assert len(np.unique(lab[lab > 0])) == 1


def test_pairs():
    assert pair_positions([0, 1, 2, 3]) == [1, 0, 3, 2]
    assert pair_positions([6, 7]) == [1, 0]
    assert pair_positions([0, 1, 2]) == [1, 0, 0]
    assert pair_positions([5]) == [0]


def test_batch_of_one_fuses_with_its_mirror():
    m = _method()
    batch = _batch(1, first=5)
    out = m.prepare(batch, _ctx())
    alpha = out["label"][0].float() / 4
    img = batch["image"][0]
    assert torch.equal(out["image"][0], alpha * img + (1 - alpha) * img.flip((1, 2, 3)))


def test_reproducible_from_the_seed():
    m = _method()
    a = m.prepare(_batch(), _ctx())
    b = m.prepare(_batch(), _ctx())
    assert torch.equal(a["label"], b["label"]) and torch.equal(a["image"], b["image"])
    # a sample's map depends on its global index, not on the batch around it
    c = m.prepare(_batch(2, first=2), _ctx())
    assert torch.equal(c["label"], a["label"][2:])
    d = m.prepare(_batch(), _ctx(step=4))
    assert not torch.equal(d["label"], a["label"])


def test_loss_known_value():
    """Uniform logits: CE = log 5, each class's Dice = (0.4 n_c + s) / (0.2 N + n_c + s)."""
    labels = torch.tensor([[[0, 0, 1, 4]]])  # (1, 1, 4): N = 4
    logits = torch.zeros(1, 5, 1, 4)
    s = 1e-5
    counts = [2, 1, 0, 0, 1]
    dice = [(0.4 * n + s) / (0.2 * 4 + n + s) for n in counts]
    want = math.log(5) - sum(dice) / 5
    assert fusion_loss(logits, labels).item() == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("arch", ["tiny", "tiny-primus"])
def test_build_and_loss(arch):
    torch.manual_seed(0)
    m = _method(arch)
    net = m.build()
    batch = m.prepare(_batch(2), _ctx())
    loss = m.loss(net, batch, _ctx())
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    # without deep supervision a UNet's lower-resolution seg layers stay unused
    unused = [n for n, p in net.named_parameters() if p.grad is None]
    assert all(n.startswith("decoder.seg_layers.") for n in unused)
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    assert all(torch.isfinite(g).all() for g in grads)
    assert all(g.abs().sum() > 0 for g in grads[:2])  # the stem / patch embedding learns
    assert m.export(net) is net


def test_recipe_and_check():
    r = VolumeFusion.recipe("resenc")
    assert (r.optimizer, r.lr, r.weight_decay) == ("sgd", 1e-3, 3e-5)
    assert VolumeFusion.recipe("primus").optimizer == "adamw"
    from openmind_curate.errors import InputError

    with pytest.raises(InputError, match="k=0"):
        VolumeFusion(VolumeFusionParams(k=0), "tiny", P).check()
