"""S3D: exact, reproducible block masks; a loss blind to visible voxels; an
encoder in which masked positions stay empty at every stage."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from openmind_curate.train import models
from openmind_curate.train.methods.base import StepContext
from openmind_curate.train.methods.s3d import (
    MASK_SALT,
    S3D,
    S3DParams,
    batch_masks,
    draw_mask,
    mask_at,
    s3d_loss,
    sparse_instance_norm,
)

SHAPE = (32, 32, 32)


def _ctx(seed: int = 7, step: int = 3) -> StepContext:
    return StepContext(step=step, seed=seed, device=torch.device("cpu"))


def _batch(b: int = 2) -> dict:
    g = torch.Generator().manual_seed(0)
    image = torch.randn(b, 1, *SHAPE, generator=g)
    anon = torch.zeros(b, 1, *SHAPE)
    anon[:, :, :4] = 1.0
    return {
        "image": image,
        "anat": torch.ones_like(image),
        "anon": anon,
        "index": list(range(10, 10 + b)),
    }


def test_masks_exact_ratio_block_aligned_and_reproducible():
    params = S3DParams(block=8)
    ctx = _ctx()
    masks = batch_masks(SHAPE, params, [10, 11, 12], ctx)
    assert masks.shape == (3, 1, *SHAPE) and masks.dtype == torch.bool
    for k, index in enumerate([10, 11, 12]):
        _, ratio = draw_mask(SHAPE, 8, 0.6, 0.9, ctx.generator(index, MASK_SALT))
        assert 0.6 <= ratio <= 0.9
        grid = masks[k, 0, ::8, ::8, ::8]  # one voxel per block
        assert int(grid.sum()) == round(ratio * 64)  # exactly round(ratio * blocks)
        expanded = grid.repeat_interleave(8, 0).repeat_interleave(8, 1).repeat_interleave(8, 2)
        assert torch.equal(expanded, masks[k, 0])  # whole blocks, aligned to the grid
    assert torch.equal(masks, batch_masks(SHAPE, params, [10, 11, 12], _ctx()))
    assert not torch.equal(masks, batch_masks(SHAPE, params, [10, 11, 12], _ctx(step=4)))
    assert not torch.equal(masks[0], masks[1])
    # a sample's mask does not depend on its batch neighbours (any rank split)
    assert torch.equal(masks[1], batch_masks(SHAPE, params, [11], ctx)[0])


def test_masked_loss_has_zero_gradient_on_visible_voxels():
    batch = _batch()
    mask = batch_masks(SHAPE, S3DParams(block=8), batch["index"], _ctx())
    pred = torch.randn(2, 1, *SHAPE, requires_grad=True)
    s3d_loss(pred, batch["image"], mask, batch["anon"]).backward()
    assert torch.all(pred.grad[~mask] == 0)
    assert torch.all(pred.grad[batch["anon"].bool()] == 0)  # defaced voxels too
    assert torch.count_nonzero(pred.grad[mask & ~batch["anon"].bool()]) > 0


def test_masked_positions_stay_zero_through_every_encoder_stage():
    torch.manual_seed(0)
    net = S3D(S3DParams(block=8), "tiny", 32).build()
    batch = _batch()
    mask = batch_masks(SHAPE, S3DParams(block=8), batch["index"], _ctx())
    skips = net.encode(batch["image"], mask)
    assert len(skips) == 3
    for skip in skips:
        hidden = mask_at(mask, tuple(skip.shape[2:]), 8)
        assert hidden is not None
        hidden = hidden.expand_as(skip)
        assert torch.all(skip[hidden] == 0)
        assert torch.count_nonzero(skip[~hidden]) > 0
    # nothing under the mask leaks into the encoder: other masked values, same skips
    other = batch["image"].masked_fill(mask, 5.0)
    for a, b in zip(skips, net.encode(other, mask), strict=True):
        assert torch.equal(a, b)
    # the plain network (export) is dense again after the sparse forward
    unet = net.unet
    assert torch.count_nonzero(unet.encoder(batch["image"])[0][mask.expand(-1, 8, -1, -1, -1)]) > 0


def test_sparse_norm_is_instance_norm_over_the_visible_voxels():
    x = torch.randn(2, 3, 4, 4, 4)
    assert torch.allclose(
        sparse_instance_norm(x, None, None, None, 1e-5), F.instance_norm(x, eps=1e-5), atol=1e-5
    )
    hidden = torch.zeros(2, 1, 4, 4, 4, dtype=torch.bool)
    hidden[:, :, :2] = True
    y = sparse_instance_norm(x, hidden, None, None, 1e-5)
    assert torch.allclose(y[:, :, 2:], F.instance_norm(x[:, :, 2:], eps=1e-5), atol=1e-5)
    assert torch.all(y[:, :, :2] == 0)


def test_finite_loss_and_gradients_on_tiny_and_export_keys():
    torch.manual_seed(0)
    method = S3D(S3DParams(), "tiny", 32)
    method.check()
    net = method.build()
    ctx = StepContext(step=0, seed=1, device=torch.device("cpu"), anon_aware=True)
    batch = method.prepare(_batch(), ctx)
    loss = method.loss(net, batch, ctx)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    # the plain UNet's lower-resolution seg layers (deep supervision, off) never see a gradient
    grads = {
        n: p.grad
        for n, p in net.named_parameters()
        if not n.startswith("unet.decoder.seg_layers.0")
    }
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert all(t.grad.abs().sum() > 0 for t in net.tokens)
    exported = method.export(net)
    assert set(exported.state_dict()) == set(models.build("tiny", patch=32).state_dict())


def test_sparse_norm_keeps_no_float32_copies_for_backward():
    """At ResEnc-L's 160^3 the sparse norm's float32 temporaries, if kept for
    the backward, cost about 6x a bf16 activation per norm (tens of GB at
    batch 8); it keeps at most its inputs, like nn.InstanceNorm3d, and its
    gradients are those of the plain computation."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, 8, generator=g).to(torch.bfloat16).requires_grad_()
    hidden = torch.rand(2, 1, 8, 8, 8, generator=g) < 0.7
    weight = torch.randn(4, generator=g).requires_grad_()
    bias = torch.randn(4, generator=g).requires_grad_()
    kept = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        kept.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = sparse_instance_norm(x, hidden, weight, bias, 1e-5)
    assert sum(kept) <= 1.5 * x.numel() * x.element_size(), sum(kept)
    y.float().square().sum().backward()
    got = [t.grad.clone() for t in (x, weight, bias)]
    for t in (x, weight, bias):
        t.grad = None
    xf = x.float()
    vis = (~hidden).float()
    mean = (xf * vis).sum((2, 3, 4), keepdim=True) / vis.sum((2, 3, 4), keepdim=True)
    var = ((xf - mean) * vis).square().sum((2, 3, 4), keepdim=True) / vis.sum(
        (2, 3, 4), keepdim=True
    )
    ref = ((xf - mean) * torch.rsqrt(var + 1e-5) * weight.view(1, -1, 1, 1, 1)) + bias.view(
        1, -1, 1, 1, 1
    )
    (ref * vis).to(x.dtype).float().square().sum().backward()
    for a, t in zip(got, (x, weight, bias), strict=True):
        assert torch.equal(a, t.grad)
