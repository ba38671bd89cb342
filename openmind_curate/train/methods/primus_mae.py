"""Masked auto-encoding on Primus (the transformer), as nnssl's `BaseEvaMAETrainer`.

75% of a patch's 8^3 tokens are dropped before the transformer (`tokens`):
the encoder (Primus's patch embedding and EVA blocks) sees only the kept
tokens, each with its own absolute positional embedding and rotary
embedding. A small EVA decoder (2 blocks, 864 wide, 12 heads: appendix D;
nnssl's ``decoder_eva_depth`` / ``decoder_eva_numheads``) then runs on the
full sequence, with a learnable mask token at every dropped place, and
Primus's own up-projection (PatchDecode) turns tokens back into voxels. The
loss is the squared error on the dropped tokens' voxels only (times
1 - anon with ``--anon-aware``).

Differences from nnssl, on purpose: the token order is dna Primus's
``flatten(2)`` (D, H, W), the order fine-tuning uses (nnssl's MAE module
flattens the first two spatial axes swapped, which transposes its
positional embedding between pre-training and fine-tuning); the kept
tokens' rotary embeddings get a heads axis (dna's Eva with patch drop
broadcasts them against the heads, right only for a batch of one). The
decoder's width may differ from the encoder's (then linear maps join them;
at the defaults on Primus-M both are 864 and the maps are identities, as in
nnssl). Stochastic depth (0.2) is in encoder and decoder alike, as nnssl;
it draws from torch's global generator, whose state the trainer
checkpoints. Not followed: nnssl's Primus trainers also turn on layer scale
(init 0.1) and an inner attention norm; the Primus here is `models.build`'s
(dna's defaults), the network fine-tuning rebuilds.

Only the Primus is exported (``down_projection.*``, ``eva.*``,
``up_projection.*``): the decoder and the mask token are not.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from openmind_curate.errors import InputError
from openmind_curate.train import models
from openmind_curate.train.mae import mae_loss
from openmind_curate.train.methods import tokens
from openmind_curate.train.methods.base import Batch, StepContext


class PrimusMAE(nn.Module):
    """A Primus with an MAE decoder: ``forward(image, keep)`` -> the
    reconstruction (b, 1, D, H, W) of `image` from its kept tokens `keep`
    (b, K) (ascending indices into the (D, H, W)-ordered token sequence)."""

    def __init__(
        self,
        primus: nn.Module,
        token: int,
        depth: int,
        width: int,
        heads: int,
        drop_path: float,
        init_values: float | None = None,
        scale_attn_inner: bool = False,
    ):
        super().__init__()
        from dynamic_network_architectures.building_blocks.eva import Eva

        self.primus = primus
        self.token = token
        embed = primus.embed_dim
        grid = tuple(int(s) for s in primus.eva.rope.feat_shape)
        self.to_decoder = nn.Linear(embed, width) if width != embed else nn.Identity()
        # nnssl initialises its mask token with N(0, 1e-6)
        self.mask_token = nn.Parameter(torch.randn(1, 1, width) * 1e-6)
        self.decoder = Eva(
            embed_dim=width,
            depth=depth,
            num_heads=heads,
            ref_feat_shape=grid,
            drop_path_rate=drop_path,
            # the encoder's block options (nnssl's: layer scale 0.1, norm inside attention)
            init_values=init_values,
            scale_attn_inner=scale_attn_inner,
        )
        self.from_decoder = nn.Linear(width, embed) if width != embed else nn.Identity()

    def embed(self, image: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """Patch-embedded tokens (b, N, C) in (D, H, W) order, and the grid."""
        t = self.primus.down_projection(image)
        grid = tuple(t.shape[2:])
        return t.flatten(2).transpose(1, 2), grid  # type: ignore[return-value]

    def encode(self, image: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """The encoder's output (b, K, C) for the kept tokens only: the
        dropped tokens never enter the transformer."""
        eva = self.primus.eva
        x, _ = self.embed(image)
        if eva.pos_embed is not None:
            x = x + eva.pos_embed
        x = tokens.gather_tokens(eva.pos_drop(x), keep)
        rope = None
        if eva.rope is not None:
            rope = tokens.gather_rows(eva.rope.get_embed().to(x.device), keep).unsqueeze(1)
        for block in eva.blocks:
            x = block(x, rope=rope)
        return eva.norm(x)

    def forward(self, image: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        b = image.shape[0]
        grid = tuple(s // self.token for s in image.shape[2:])
        n = grid[0] * grid[1] * grid[2]
        kept = self.to_decoder(self.encode(image, keep))
        full = tokens.scatter_tokens(kept, keep, n, self.mask_token)
        decoded, _ = self.decoder(full)
        decoded = self.from_decoder(decoded)
        volume = decoded.transpose(1, 2).reshape(b, -1, *grid)
        return self.primus.up_projection(volume)


def check(params: Any) -> None:
    """Refuse a decoder dna's Eva cannot build (InputError naming the option):
    its rotary embedding needs a head width that is a multiple of 6."""
    width, heads = params.decoder_width, params.decoder_heads
    if params.decoder_depth < 1:
        raise InputError(f"--set decoder_depth: must be >= 1, got {params.decoder_depth}")
    if heads < 1 or width % heads or (width // heads) % 6:
        raise InputError(
            f"--set decoder_width={width} decoder_heads={heads}: the head width "
            "(width / heads) must be a whole multiple of 6 (864 / 12 = 72)"
        )
    if not 0.0 <= params.drop_path < 1.0:
        raise InputError(f"--set drop_path: must be in [0, 1), got {params.drop_path}")
    if not 0.0 < params.mask_ratio < 1.0:
        raise InputError(f"--set mask_ratio: must be in (0, 1), got {params.mask_ratio}")


def build(params: Any, arch: str, patch: int) -> nn.Module:
    """The network MAE trains on a Primus `arch`: the Primus (stochastic
    depth `params.drop_path`) and the decoder of `params.decoder_*`
    (checked first: `check`)."""
    check(params)
    cfg = models.arch_config(arch)
    primus = models.build(arch, patch=patch, drop_path=params.drop_path)
    return PrimusMAE(
        primus,
        token=cfg.token,
        depth=params.decoder_depth,
        width=params.decoder_width,
        heads=params.decoder_heads,
        drop_path=params.drop_path,
        init_values=cfg.init_values,
        scale_attn_inner=cfg.scale_attn_inner,
    )


def draw(
    batch: Batch, ctx: StepContext, ratio: float, token: int
) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """(b, N) dropped-token masks of the batch's samples (CPU), and the grid."""
    grid = tokens.token_grid(batch["image"].shape[2:], token)
    n = grid[0] * grid[1] * grid[2]
    return tokens.batch_dropped(n, batch["index"], ratio, ctx.generator), grid


def loss(net: nn.Module, batch: Batch, ctx: StepContext, params: Any) -> torch.Tensor:
    """Squared error on the dropped tokens' voxels (times 1 - anon with
    ``ctx.anon_aware``), each sample's mean over its own loss voxels."""
    image = batch["image"]
    token = models.unwrap(net).token
    dropped, grid = draw(batch, ctx, params.mask_ratio, token)
    keep = tokens.keep_indices(dropped).to(image.device)
    pred = net(image, keep)
    mask = tokens.to_voxels(dropped, grid, token).to(image.device)
    anon = batch["anon"] if ctx.anon_aware else None
    return mae_loss(pred.float(), image, mask, anon)


def export(net: nn.Module) -> nn.Module:
    """The dna Primus (patch embedding, transformer, up-projection)."""
    return models.unwrap(net).primus
