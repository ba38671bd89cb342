"""SimMIM on Primus: mask tokens at the transformer's input, no decoder.

After Primus's patch embedding, 75% of the 8^3 tokens (`tokens`, drawn per
sample from (seed, step, global index)) are replaced by one learnable mask
token; the positional and rotary embeddings are then added to every token
as usual, so the transformer sees all N places and knows which are masked.
Primus's own up-projection (PatchDecode) reconstructs the voxels, and the
loss is the squared error on the masked tokens' voxels only (times
1 - anon with ``--anon-aware``). This is nnssl's `SimMIMEvaTrainer` /
`EvaSimMIM`: mask ratio 0.75 (nnssl's ``mask_percentage``), drop-path 0.2,
AdamW at 3e-4, wd 5e-2, betas (0.9, 0.98), 50 warm-up epochs (appendix D,
the Primus recipe). The mask token starts at N(0, 1e-6), as nnssl's.

Only the Primus is exported; the mask token is not.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from openmind_curate.errors import InputError
from openmind_curate.train import models
from openmind_curate.train.mae import mae_loss
from openmind_curate.train.methods import tokens
from openmind_curate.train.methods.base import Batch, Method, StepContext


@dataclass(frozen=True)
class SimMIMParams:
    mask_ratio: float = 0.75  # share of the 8^3 tokens masked (appendix D)
    drop_path: float = 0.2  # stochastic depth in the transformer (appendix D)


class SimMIMNet(nn.Module):
    """A Primus with a learnable mask token: ``forward(image, dropped)`` ->
    the reconstruction (b, 1, D, H, W), `dropped` (b, N) bool marking the
    tokens replaced by the mask token ((D, H, W) token order)."""

    def __init__(self, primus: nn.Module, token: int):
        super().__init__()
        self.primus = primus
        self.token = token
        self.mask_token = nn.Parameter(torch.randn(1, 1, primus.embed_dim) * 1e-6)

    def forward(self, image: torch.Tensor, dropped: torch.Tensor) -> torch.Tensor:
        t = self.primus.down_projection(image)
        b, c = t.shape[:2]
        grid = t.shape[2:]
        x = tokens.replace_tokens(t.flatten(2).transpose(1, 2), dropped, self.mask_token)
        x, _ = self.primus.eva(x)  # adds the positional embeddings, then the blocks
        return self.primus.up_projection(x.transpose(1, 2).reshape(b, c, *grid))


class SimMIM(Method):
    name = "simmim"
    Params = SimMIMParams
    families = ("primus",)
    reconstruction = True

    def check(self) -> None:
        ratio = self.params.mask_ratio
        if not 0.0 < ratio < 1.0:
            raise InputError(f"--set mask_ratio: must be in (0, 1), got {ratio}")
        if not 0.0 <= self.params.drop_path < 1.0:
            raise InputError(f"--set drop_path: must be in [0, 1), got {self.params.drop_path}")

    def build(self) -> nn.Module:
        primus = models.build(self.arch, patch=self.patch, drop_path=self.params.drop_path)
        return SimMIMNet(primus, models.arch_config(self.arch).token)

    def loss(self, net: nn.Module, batch: Batch, ctx: StepContext) -> torch.Tensor:
        image = batch["image"]
        token = models.unwrap(net).token
        grid = tokens.token_grid(image.shape[2:], token)
        n = grid[0] * grid[1] * grid[2]
        dropped = tokens.batch_dropped(n, batch["index"], self.params.mask_ratio, ctx.generator)
        pred = net(image, dropped.to(image.device))
        mask = tokens.to_voxels(dropped, grid, token).to(image.device)
        anon = batch["anon"] if ctx.anon_aware else None
        return mae_loss(pred.float(), image, mask, anon)

    def export(self, net: nn.Module) -> nn.Module:
        return models.unwrap(net).primus
