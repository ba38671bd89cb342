"""Token masking, MAE on Primus and SimMIM, on tiny-primus at patch 32 (4^3 = 64 tokens)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from openmind_curate.errors import InputError
from openmind_curate.train import models
from openmind_curate.train.methods import primus_mae, tokens
from openmind_curate.train.methods.base import PRIMUS_RECIPE, StepContext
from openmind_curate.train.methods.simmim import SimMIM, SimMIMParams

ARCH, PATCH, N = "tiny-primus", 32, 64
CPU = torch.device("cpu")


@dataclass(frozen=True)
class MAEParams:
    """The fields of MAE's parameters that `primus_mae` reads (a small decoder,
    narrower than the encoder so that the width maps are exercised)."""

    mask_ratio: float = 0.75
    decoder_depth: int = 2
    decoder_width: int = 24
    decoder_heads: int = 1
    drop_path: float = 0.2


def ctx_at(step: int = 3, seed: int = 7, anon_aware: bool = False) -> StepContext:
    return StepContext(step=step, seed=seed, device=CPU, anon_aware=anon_aware)


def batch_of(b: int = 2, anon: bool = False) -> dict:
    g = torch.Generator().manual_seed(11)
    image = torch.randn(b, 1, PATCH, PATCH, PATCH, generator=g)
    defaced = torch.zeros_like(image)
    if anon:
        defaced[:, :, :, :, :12] = 1.0  # a slab crossing tokens, dropped and kept
    return {"image": image, "anon": defaced, "index": [5, 9, 2, 4][:b], "case_id": ["a"] * b}


def tiny_mae() -> nn.Module:
    torch.manual_seed(0)
    return primus_mae.build(MAEParams(), ARCH, PATCH)


def tiny_simmim() -> tuple[SimMIM, nn.Module]:
    method = SimMIM(SimMIMParams(), ARCH, PATCH)
    method.check()
    torch.manual_seed(0)
    return method, method.build()


# -- token masks -------------------------------------------------------------------


def test_token_masks_exact_count_and_reproducible():
    ctx = ctx_at()
    assert tokens.token_grid((PATCH,) * 3) == (4, 4, 4)
    masks = tokens.batch_dropped(N, [0, 5, 9], 0.75, ctx.generator)
    assert masks.shape == (3, N) and masks.dtype == torch.bool
    assert masks.sum(dim=1).tolist() == [48, 48, 48]  # round(0.75 * 64)
    assert tokens.batch_dropped(33, [1], 0.75, ctx.generator).sum() == 25  # round(24.75)
    # the same (seed, step, index) gives the same mask, whatever else is in the batch
    assert torch.equal(tokens.batch_dropped(N, [9], 0.75, ctx.generator)[0], masks[2])
    assert torch.equal(tokens.batch_dropped(N, [0, 5, 9], 0.75, ctx_at().generator), masks)
    assert not torch.equal(
        tokens.batch_dropped(N, [0, 5, 9], 0.75, ctx_at(step=4).generator), masks
    )
    assert not torch.equal(
        tokens.batch_dropped(N, [0, 5, 9], 0.75, ctx_at(seed=8).generator), masks
    )
    assert not torch.equal(masks[0], masks[1])
    keep = tokens.keep_indices(masks)
    assert keep.shape == (3, 16)
    for row, kept in zip(masks, keep, strict=True):
        assert kept.tolist() == sorted(kept.tolist())
        assert not row[kept].any()
    with pytest.raises(ValueError):
        tokens.n_dropped(N, 1.0)


def test_voxel_expansion_is_the_primus_token_order():
    # token (1, 2, 3) on the 4^3 grid is index 1*16 + 2*4 + 3 = 27;
    # it covers voxels [8:16, 16:24, 24:32]
    dropped = torch.zeros(1, N, dtype=torch.bool)
    dropped[0, 27] = True
    vox = tokens.to_voxels(dropped, (4, 4, 4), 8)
    expected = torch.zeros(1, 1, PATCH, PATCH, PATCH, dtype=torch.bool)
    expected[..., 8:16, 16:24, 24:32] = True
    assert torch.equal(vox, expected)
    # ... and Primus's patch embedding puts that cube's content in token 27
    net = tiny_mae()
    image = torch.randn(1, 1, PATCH, PATCH, PATCH)
    changed = image.clone()
    changed[..., 8:16, 16:24, 24:32] += 5.0
    with torch.no_grad():
        a, _ = net.embed(image)
        b, _ = net.embed(changed)
    differs = (a != b).any(dim=-1)[0]
    assert differs.nonzero().flatten().tolist() == [27]


def test_gather_and_scatter_tokens_by_hand():
    x = torch.arange(8.0).view(1, 4, 2)  # tokens [0,1] [2,3] [4,5] [6,7]
    keep = torch.tensor([[0, 2]])
    kept = tokens.gather_tokens(x, keep)
    assert kept.tolist() == [[[0.0, 1.0], [4.0, 5.0]]]
    full = tokens.scatter_tokens(kept, keep, 4, torch.tensor([-1.0, -2.0]))
    assert full.tolist() == [[[0.0, 1.0], [-1.0, -2.0], [4.0, 5.0], [-1.0, -2.0]]]
    dropped = torch.tensor([[False, True, False, True]])
    assert torch.equal(tokens.replace_tokens(x, dropped, torch.tensor([-1.0, -2.0])), full)


# -- MAE on Primus ---------------------------------------------------------------------


def test_mae_encoder_matches_dna_eva_on_kept_tokens():
    """Our encoder equals dna's Eva fed the same kept tokens (its own
    patch-drop path, correct for a batch of one), and with every token kept
    it equals the plain Primus transformer."""
    net = tiny_mae().eval()
    eva = net.primus.eva
    image = torch.randn(1, 1, PATCH, PATCH, PATCH)
    keep = tokens.keep_indices(tokens.batch_dropped(N, [3], 0.75, ctx_at().generator))

    class Fixed(nn.Module):
        def forward(self, x):
            return x[:, keep[0]], keep

    with torch.no_grad():
        x, _ = net.embed(image)
        full, _ = eva(x)
        torch.testing.assert_close(net.encode(image, torch.arange(N).unsqueeze(0)), full)
        eva.patch_drop = Fixed()
        try:
            reference, _ = eva(x)
        finally:
            eva.patch_drop = None
        torch.testing.assert_close(net.encode(image, keep), reference)


def test_mae_encoder_never_sees_dropped_tokens():
    net = tiny_mae().eval()
    batch = batch_of(2)
    dropped, grid = primus_mae.draw(batch, ctx_at(), 0.75, 8)
    keep = tokens.keep_indices(dropped)
    vox = tokens.to_voxels(dropped, grid, 8)
    noise = torch.randn(batch["image"].shape, generator=torch.Generator().manual_seed(1)) * 10
    with torch.no_grad():
        before = net.encode(batch["image"], keep)
        inside = net.encode(batch["image"] + noise * vox, keep)
        outside = net.encode(batch["image"] + noise * ~vox, keep)
    assert torch.equal(before, inside)  # bit for bit
    assert not torch.allclose(before, outside)


class Spy(nn.Module):
    """Keeps the prediction of the wrapped network to read d loss / d prediction."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net, self.token = net, net.token

    def forward(self, *args):
        self.out = self.net(*args)
        self.out.retain_grad()
        return self.out


def _expected_mask(batch: dict, ctx: StepContext) -> torch.Tensor:
    dropped, grid = primus_mae.draw(batch, ctx, 0.75, 8)
    return tokens.to_voxels(dropped, grid, 8)


def _loss_grad(method: str, anon_aware: bool) -> tuple[torch.Tensor, torch.Tensor, nn.Module]:
    batch, ctx = batch_of(2, anon=anon_aware), ctx_at(anon_aware=anon_aware)
    if method == "mae":
        spy = Spy(tiny_mae())
        loss = primus_mae.loss(spy, batch, ctx, MAEParams())
    else:
        simmim, net = tiny_simmim()
        spy = Spy(net)
        loss = simmim.loss(spy, batch, ctx)
    loss.backward()
    weight = _expected_mask(batch, ctx).float()
    if anon_aware:
        weight = weight * (1 - batch["anon"])
    return loss, spy.out.grad, weight


@pytest.mark.parametrize("method", ["mae", "simmim"])
@pytest.mark.parametrize("anon_aware", [False, True])
def test_masked_loss_has_no_gradient_on_visible_voxels(method, anon_aware):
    loss, grad, weight = _loss_grad(method, anon_aware)
    assert torch.isfinite(loss)
    assert torch.all(grad[weight == 0] == 0)
    assert torch.all(grad[weight > 0] != 0)  # every loss voxel counts
    if anon_aware:
        assert bool(((weight == 0) & (_expected_mask(batch_of(2), ctx_at()) > 0)).any())


def _all_grads_finite(net: nn.Module) -> None:
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name


def test_mae_refuses_a_decoder_dna_cannot_build():
    with pytest.raises(InputError, match="decoder_heads"):
        primus_mae.check(MAEParams(decoder_width=48, decoder_heads=12))  # head width 4
    with pytest.raises(InputError, match="decoder_depth"):
        primus_mae.check(MAEParams(decoder_depth=0))
    primus_mae.check(MAEParams(decoder_width=864, decoder_heads=12))


def test_mae_finite_loss_and_gradients_deterministic_and_export():
    net = tiny_mae()
    batch = batch_of(2)
    torch.manual_seed(1)  # drop-path draws from the global generator (the trainer keeps its state)
    loss = primus_mae.loss(net, batch, ctx_at(), MAEParams())
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    _all_grads_finite(net)
    assert net.mask_token.grad.abs().sum() > 0
    torch.manual_seed(1)
    again = primus_mae.loss(net, batch, ctx_at(), MAEParams())
    assert torch.equal(loss, again)
    torch.manual_seed(1)
    assert not torch.equal(loss, primus_mae.loss(net, batch, ctx_at(step=4), MAEParams()))
    exported = primus_mae.export(net)
    assert exported is net.primus
    plain = models.build(ARCH, patch=PATCH)
    assert set(exported.state_dict()) == set(plain.state_dict())
    assert set(models.encoder_state(exported)) == {
        k for k in plain.state_dict() if k.startswith(("down_projection.", "eva."))
    }


def test_simmim_finite_loss_and_gradients_deterministic_and_export():
    method, net = tiny_simmim()
    assert method.recipe("primus") == PRIMUS_RECIPE and SimMIM.families == ("primus",)
    assert SimMIM.reconstruction
    batch = batch_of(2)
    torch.manual_seed(1)
    loss = method.loss(net, batch, ctx_at())
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    _all_grads_finite(net)
    assert net.mask_token.grad.abs().sum() > 0
    torch.manual_seed(1)
    assert torch.equal(loss, method.loss(net, batch, ctx_at()))
    exported = method.export(net)
    assert exported is net.primus
    assert set(exported.state_dict()) == set(models.build(ARCH, patch=PATCH).state_dict())
