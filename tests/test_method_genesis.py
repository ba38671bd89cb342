"""Models Genesis: each transform does exactly what it says, reproducibly,
and the restoration trains on both families."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from openmind_curate.train.methods.base import StepContext
from openmind_curate.train.methods.genesis import (
    GenesisParams,
    ModelsGenesis,
    apply_curve,
    bezier_curve,
    inpaint,
    inpaint_boxes,
    intensity_curve,
    local_shuffle,
    outpaint,
    outpaint_boxes,
    shuffle_boxes,
)

SHAPE = (32, 32, 32)


def _volume(seed: int = 0) -> np.ndarray:
    """Values in [2, 3): never equal to a fill drawn in [0, 1)."""
    return (2.0 + np.random.default_rng(seed).random(SHAPE)).astype(np.float32)


def _union(boxes) -> np.ndarray:
    region = np.zeros(SHAPE, dtype=bool)
    for box in boxes:
        region[box] = True
    return region


def test_local_shuffle_keeps_each_blocks_multiset():
    x = _volume()
    rng = np.random.default_rng(1)
    boxes = shuffle_boxes(SHAPE, rng, 40)
    assert all(1 <= b.stop - b.start <= 3 for box in boxes for b in box)  # edges 1 .. 32 // 10
    out = local_shuffle(x, boxes, rng)
    # every block's values are the original block's values, permuted; where
    # blocks overlap the last one written wins, so check each against what it
    # left: the voxels no later block covers
    for k, box in enumerate(boxes):
        later = _union(boxes[k + 1 :])
        own = np.zeros(SHAPE, dtype=bool)
        own[box] = True
        if not (own & later).any():
            assert np.array_equal(np.sort(out[box].ravel()), np.sort(x[box].ravel()))
    assert np.array_equal(out[~_union(boxes)], x[~_union(boxes)])  # nothing else moved
    single = local_shuffle(x, [boxes[0]], np.random.default_rng(2))
    assert np.array_equal(np.sort(single[boxes[0]].ravel()), np.sort(x[boxes[0]].ravel()))
    big = (slice(0, 3), slice(0, 3), slice(0, 3))
    assert not np.array_equal(local_shuffle(x, [big], np.random.default_rng(2))[big], x[big])


def test_inpainting_changes_exactly_the_drawn_boxes():
    x = _volume()
    rng = np.random.default_rng(3)
    boxes = inpaint_boxes(SHAPE, rng)
    assert 1 <= len(boxes) <= 5
    for box in boxes:
        for b, s in zip(box, SHAPE, strict=True):
            assert s // 6 <= b.stop - b.start <= s // 3 and b.start >= 3 and b.stop <= s - 3
    out = inpaint(x, boxes, rng)
    region = _union(boxes)
    assert np.array_equal(out != x, region)
    assert out[region].min() >= 0.0 and out[region].max() < 1.0


def test_outpainting_keeps_exactly_the_drawn_boxes():
    x = _volume()
    rng = np.random.default_rng(4)
    boxes = outpaint_boxes(SHAPE, rng)
    assert 1 <= len(boxes) <= 5
    for box in boxes:
        for b, s in zip(box, SHAPE, strict=True):
            assert (
                s - 4 * s // 7 <= b.stop - b.start <= s - 3 * s // 7
                and b.start >= 3
                and b.stop <= s - 3
            )
    out = outpaint(x, boxes, rng)
    region = _union(boxes)
    assert np.array_equal(out == x, region)
    assert out[~region].min() >= 0.0 and out[~region].max() < 1.0


def test_bezier_curve_known_points():
    pts = np.array([[0.0, 0.0], [0.5, 0.0], [0.5, 1.0], [1.0, 1.0]])
    xs, ys = bezier_curve(pts, 3)
    # t = 0 is the last control point, t = 1 the first; t = 0.5 is the mean of
    # the control points weighted 1:3:3:1 / 8
    assert np.allclose(xs, [1.0, (0 + 1.5 + 1.5 + 1) / 8, 0.0])
    assert np.allclose(ys, [1.0, (0 + 0 + 3 + 1) / 8, 0.0])


@pytest.mark.parametrize("invert", [False, True])
def test_intensity_curve_is_monotone_with_fixed_end_points(invert):
    for seed in range(20):
        xs, ys = intensity_curve(np.random.default_rng(seed), 100000, invert)
        assert np.all(np.diff(xs) >= 0)
        steps = np.diff(ys)
        assert np.all(steps <= 0) if invert else np.all(steps >= 0)
        assert (xs[0], xs[-1]) == (0.0, 1.0)
        assert (ys[0], ys[-1]) == ((1.0, 0.0) if invert else (0.0, 1.0))
        grid = np.linspace(0, 1, 101)
        mapped = apply_curve(grid, xs, ys)
        assert np.allclose(mapped, np.interp(grid, xs, ys), atol=1e-6)
        assert apply_curve(np.array([-3.0, 4.0]), xs, ys).tolist() == [ys[0], ys[-1]]  # clamped
        # the original's curve: sorted x against y in curve order (inverted), or both sorted
        cx, cy = bezier_curve(
            np.array([[0.0, 0.0], *np.random.default_rng(seed).random((2, 2)), [1.0, 1.0]]), 100000
        )
        original = np.interp(grid, np.sort(cx), cy if invert else np.sort(cy))
        assert np.allclose(mapped, original, atol=1e-6)
        assert np.all(np.diff(mapped) <= 0) if invert else np.all(np.diff(mapped) >= 0)


def _batch(b: int = 2) -> dict:
    g = torch.Generator().manual_seed(0)
    image = torch.randn(b, 1, *SHAPE, generator=g)
    anon = torch.zeros(b, 1, *SHAPE)
    anon[:, :, :, :5] = 1.0
    return {"image": image, "anat": torch.ones_like(image), "anon": anon, "index": [4, 9][:b]}


def _ctx(step: int = 2, anon_aware: bool = False) -> StepContext:
    return StepContext(step=step, seed=5, device=torch.device("cpu"), anon_aware=anon_aware)


def test_prepare_is_reproducible_and_flips_targets_with_inputs():
    method = ModelsGenesis(GenesisParams(flip_rate=1.0, local_blocks=200), "tiny", 32)
    a = method.prepare(_batch(), _ctx())
    b = method.prepare(_batch(), _ctx())
    for k in ("input", "image", "anat", "anon"):
        assert torch.equal(a[k], b[k])
    assert not torch.equal(a["input"], method.prepare(_batch(), _ctx(step=3))["input"])
    assert not torch.equal(a["input"], a["image"])
    # flips (rate 1: three) move the target and its masks together
    orig = _batch()
    orig["anon"] = (orig["image"] > 0.5).float()
    flipped = method.prepare(orig, _ctx())
    assert not torch.equal(flipped["image"], orig["image"])
    assert torch.equal(
        flipped["image"].flatten(1).sort().values, orig["image"].flatten(1).sort().values
    )
    assert torch.equal(flipped["anon"], (flipped["image"] > 0.5).float())
    # a sample's draw does not depend on its batch neighbours
    one = method.prepare(
        {k: (v[1:] if torch.is_tensor(v) else v[1:]) for k, v in _batch().items()}, _ctx()
    )
    assert torch.equal(one["input"][0], a["input"][1])


def test_no_distortion_is_identity_and_range_restored():
    none = GenesisParams(flip_rate=0, local_rate=0, nonlinear_rate=0, paint_rate=0)
    out = ModelsGenesis(none, "tiny", 32).prepare(_batch(), _ctx())
    assert torch.allclose(out["input"], out["image"], atol=1e-5)
    paint = dataclasses.replace(none, paint_rate=1.0, inpaint_rate=0.0)  # out-painting only
    out = ModelsGenesis(paint, "tiny", 32).prepare(_batch(), _ctx())
    lo = out["image"].amin(dim=(1, 2, 3, 4))
    hi = out["image"].amax(dim=(1, 2, 3, 4))
    assert torch.all(
        out["input"].amin(dim=(1, 2, 3, 4)) >= lo - 1e-5
    )  # fills in the sample's range
    assert torch.all(out["input"].amax(dim=(1, 2, 3, 4)) <= hi + 1e-5)


def test_anon_aware_loss_ignores_defaced_voxels():
    method = ModelsGenesis(GenesisParams(), "tiny", 32)
    batch = {
        "input": torch.zeros(2, 1, *SHAPE),
        "image": torch.randn(2, 1, *SHAPE),
        "anon": _batch()["anon"],
    }
    pred = torch.randn(2, 1, *SHAPE, requires_grad=True)

    class Fixed(torch.nn.Module):
        def forward(self, x):
            return pred

    method.loss(Fixed(), batch, _ctx(anon_aware=True)).backward()
    assert torch.all(pred.grad[batch["anon"].bool()] == 0)
    assert torch.all(pred.grad[~batch["anon"].bool()] != 0)
    expected = ((pred - batch["image"]) ** 2 * (1 - batch["anon"])).sum(dim=(1, 2, 3, 4)) / (
        1 - batch["anon"]
    ).sum(dim=(1, 2, 3, 4))
    assert torch.allclose(method.loss(Fixed(), batch, _ctx(anon_aware=True)), expected.mean())
