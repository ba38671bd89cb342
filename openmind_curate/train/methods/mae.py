"""Masked auto-encoding: the paper's best method for segmentation.

On ResEnc-L (the CNN) a patch is tiled by `mask_block`^3 cubes, exactly
`mask_ratio` of them are set to zero, and the UNet reconstructs the patch;
the loss is the squared error on the masked voxels only (`train.mae`). The
recipe is nnssl's (SGD Nesterov 0.99, lr 1e-2, wd 3e-5, 16^3 blocks, 75%).

On Primus-M (the transformer) 75% of the 8^3 tokens are dropped before the
encoder and a 2-layer decoder (864 wide, 12 heads) restores them
(`primus_mae`); AdamW at 3e-4 with drop-path 0.2 and 50 warm-up epochs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from openmind_curate.errors import InputError
from openmind_curate.train import models
from openmind_curate.train.mae import apply_mask, batch_masks, mae_loss
from openmind_curate.train.methods.base import Batch, Method, StepContext


@dataclass(frozen=True)
class MAEParams:
    mask_block: int = 16  # CNN: block edge in voxels (Primus masks whole 8^3 tokens)
    mask_ratio: float = 0.75
    decoder_depth: int = 2  # Primus: the MAE decoder's transformer blocks
    decoder_width: int = 864
    decoder_heads: int = 12
    drop_path: float = 0.2  # Primus: stochastic depth in the encoder


class MAE(Method):
    name = "mae"
    Params = MAEParams
    families = ("resenc", "primus")
    reconstruction = True

    @property
    def primus(self) -> bool:
        return models.family(self.arch) == "primus"

    def check(self) -> None:
        p = self.params
        if self.primus:
            from openmind_curate.train.methods import primus_mae

            primus_mae.check(p)
        if not 0.0 < p.mask_ratio < 1.0:
            raise InputError(f"mask ratio must be in (0, 1), got {p.mask_ratio}")
        if p.mask_block < 1:
            raise InputError(f"mask block must be >= 1, got {p.mask_block}")

    def build(self) -> nn.Module:
        if self.primus:
            from openmind_curate.train.methods import primus_mae

            return primus_mae.build(self.params, self.arch, self.patch)
        return models.build(self.arch, patch=self.patch)

    def loss(self, net: nn.Module, batch: Batch, ctx: StepContext) -> torch.Tensor:
        if self.primus:
            from openmind_curate.train.methods import primus_mae

            return primus_mae.loss(net, batch, ctx, self.params)
        image = batch["image"]
        mask = batch_masks(
            image.shape[2:],
            batch["index"],
            ctx.step,
            ctx.seed,
            self.params.mask_block,
            self.params.mask_ratio,
            stream=ctx.stream,
            device=image.device,
        )
        pred = net(apply_mask(image, mask))
        anon = batch["anon"] if ctx.anon_aware else None
        return mae_loss(pred.float(), image, mask, anon)

    def export(self, net: nn.Module) -> nn.Module:
        if self.primus:
            from openmind_curate.train.methods import primus_mae

            return primus_mae.export(net)
        return net
