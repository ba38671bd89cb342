"""MAE masking and loss (openmind_curate.train.mae): known answers, no network."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from openmind_curate.train.mae import (  # noqa: E402
    apply_mask,
    batch_masks,
    mae_loss,
    mask_blocks,
    mask_seed,
)


def test_mask_ratio_and_block_structure_exact():
    gen = torch.Generator().manual_seed(3)
    mask = mask_blocks((32, 32, 32), block=8, ratio=0.75, generator=gen)
    assert mask.shape == (32, 32, 32) and mask.dtype == torch.bool
    assert int(mask.sum()) == 48 * 8**3  # 48 of the 64 blocks, exactly 75% of the voxels
    blocks = mask.view(4, 8, 4, 8, 4, 8).permute(0, 2, 4, 1, 3, 5).reshape(64, -1)
    assert bool((blocks.all(1) | ~blocks.any(1)).all())  # every block all in or all out
    # the default 16^3 blocks at 160^3: 1000 blocks, 750 masked
    big = mask_blocks((160, 160, 160), generator=torch.Generator().manual_seed(0))
    assert int(big.sum()) == 750 * 16**3


def test_mask_edges_not_multiple_of_block():
    mask = mask_blocks((20, 16, 12), block=8, ratio=0.5, generator=torch.Generator())
    assert mask.shape == (20, 16, 12)
    coarse = mask[::8, ::8, ::8]  # 3 x 2 x 2 blocks, round(0.5 * 12) = 6 masked
    assert int(coarse.sum()) == 6


def test_masks_seeded_by_seed_step_and_global_index():
    a = batch_masks((32, 32, 32), [0, 1, 2, 3], step=5, seed=7, block=8)
    # rank 1 of 2 draws samples 2 and 3: the same masks
    b = batch_masks((32, 32, 32), [2, 3], step=5, seed=7, block=8)
    assert torch.equal(a[2:], b)
    assert a.shape == (4, 1, 32, 32, 32)
    assert not torch.equal(a[0], a[1])
    assert not torch.equal(a, batch_masks((32, 32, 32), [0, 1, 2, 3], step=6, seed=7, block=8))
    assert not torch.equal(a, batch_masks((32, 32, 32), [0, 1, 2, 3], step=5, seed=8, block=8))
    assert mask_seed(7, 5, 2) == mask_seed(7, 5, 2) < 2**63


def test_apply_mask_fills_zeros():
    image = torch.rand(1, 1, 16, 16, 16) + 1.0
    mask = batch_masks((16, 16, 16), [0], step=0, seed=0, block=4)
    x = apply_mask(image, mask)
    assert bool((x[mask] == 0).all()) and torch.equal(x[~mask], image[~mask])


def test_loss_only_on_masked_voxels():
    target = torch.rand(2, 1, 16, 16, 16)
    mask = batch_masks((16, 16, 16), [0, 1], step=0, seed=0, block=4)
    pred = torch.rand(2, 1, 16, 16, 16)
    base = mae_loss(pred, target, mask)
    changed = pred.clone()
    changed[~mask] = 1e6  # unmasked voxels: no effect
    assert float(mae_loss(changed, target, mask)) == float(base)
    changed[mask] += 1.0  # masked voxels: effect
    assert float(mae_loss(changed, target, mask)) != float(base)
    # known answer: per-sample mean squared error over the masked voxels, then the mean
    want = torch.stack([((pred[i] - target[i])[mask[i]] ** 2).mean() for i in range(2)]).mean()
    assert torch.allclose(base, want, rtol=1e-6)


def test_anon_aware_zeroes_anonymized_voxels():
    target = torch.zeros(1, 1, 16, 16, 16)
    mask = torch.ones(1, 1, 16, 16, 16, dtype=torch.bool)
    anon = torch.zeros(1, 1, 16, 16, 16)
    anon[..., :8] = 1.0  # half the patch was defaced
    pred = torch.zeros(1, 1, 16, 16, 16)
    pred[..., :8] = 5.0  # wrong only inside the anonymized half
    assert float(mae_loss(pred, target, mask)) > 0
    assert float(mae_loss(pred, target, mask, anon)) == 0.0
    pred[..., 8:] = 1.0
    assert float(mae_loss(pred, target, mask, anon)) == pytest.approx(1.0)


def test_all_anonymized_batch_gives_zero_loss_and_finite_grads():
    target = torch.rand(2, 1, 16, 16, 16)
    mask = batch_masks((16, 16, 16), [0, 1], step=0, seed=0, block=4)
    anon = torch.ones(2, 1, 16, 16, 16)
    pred = torch.rand(2, 1, 16, 16, 16, requires_grad=True)
    loss = mae_loss(pred, target, mask, anon)
    assert loss.item() == 0.0
    loss.backward()
    assert pred.grad is not None and bool(torch.isfinite(pred.grad).all())
    assert float(pred.grad.abs().max()) == 0.0
