"""SwinUNETR's pretext tasks (Tang et al.): in-painting, rotation, contrast.

Each crop gives two views ("the batch is internally doubled", appendix D.5).
A view is the crop rotated by k * 90 degrees about z (in the (H, W) plane of
the (D, H, W) = (z, y, x) arrays, nnssl's ``rot90(x, k, (2, 3))`` on
(c, z, y, x)), then cut out in two passes as nnssl's
`swin_unetr_transform` (after the original repository): boxes filled with
min-max normalised Gaussian noise until up to `max_drop` of the volume is
covered, then boxes copied from another crop's view, again up to `max_drop`
— at most 60% in all (appendix D.5). The network sees both views of every
crop at once and is trained, with weights 1, 1, 1, on:

- in-painting: L1 between its dense output and the rotated, uncut view,
  over the whole volume as nnssl does (with ``--anon-aware`` the defaced
  voxels are left out);
- rotation: cross-entropy of a 4-way head;
- contrast: NT-Xent (temperature 0.5, nnssl's `ContrastLoss`) between the
  two views' embeddings, every other view of the batch a negative.

Network (nnssl's `SwinUNETRArchitecture` / `SwinUNETREvaArchitecture`): the
backbone's lowest-resolution features (ResEnc: the bottleneck, Primus: the
token grid); the rotation head (Linear to 4) reads its first voxel/token and
the contrast head (Linear to 512) its second (the original repository's
"one slice/channel"); the reconstruction head mirrors the encoder without
skips: per stage a 3^3 convolution, and where the encoder downsampled,
InstanceNorm, LeakyReLU and trilinear x2 upsampling. Only the backbone is
exported.

Where nnssl differs (it draws from global generators): each sample draws
from its own generator; a box that would take a pass past `max_drop` ends
the pass (nnssl keeps it, overshooting by up to one box); the second pass
copies from the view of the crop's pair g ^ 1 (see `volume_fusion`) before
its own cut-outs, where nnssl picks a random crop of the batch (skipping
the pass when it picks the crop itself).

Optimisation (the appendix gives none): ResEnc-L as nnssl's
`SwinUNETRTrainer`, i.e. its `AbstractBaseTrainer` defaults (SGD Nesterov
0.99, lr 1e-2, wd 3e-5); Primus-M as `SwinUNETREvaTrainer` (AdamW 3e-4,
wd 5e-2, 50 warm-up epochs, drop-path 0.2). Patch 160, batch 8 (D.5).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from openmind_curate.errors import InputError
from openmind_curate.train import models
from openmind_curate.train.methods import heads
from openmind_curate.train.methods.base import (
    PRIMUS_RECIPE,
    RESENC_RECIPE,
    Batch,
    Method,
    Recipe,
    StepContext,
    per_sample_mean,
)
from openmind_curate.train.methods.heads import nt_xent
from openmind_curate.train.methods.volume_fusion import pair_positions

Box = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]  # (start, stop) per axis


@dataclass(frozen=True)
class SwinUNETRParams:
    w_inpaint: float = 1.0  # appendix D.5: equal weights
    w_rotation: float = 1.0
    w_contrast: float = 1.0
    max_drop: float = 0.3  # per cut-out pass, two passes: up to 60% (D.5, nnssl)
    max_block: float = 0.25  # largest box edge, fraction of the crop edge (nnssl)
    min_block: float = 0.05  # smallest box edge and start margin, fraction (nnssl's tolr)
    temperature: float = 0.5  # NT-Xent (nnssl's ContrastLoss)
    contrast_dim: int = 512  # contrast head's output width (nnssl)
    drop_path: float = 0.2  # Primus: stochastic depth (nnssl's SwinUNETREvaTrainer)


# -- the algorithm (pure) --------------------------------------------------------


def rotate_z(x: torch.Tensor, k: int) -> torch.Tensor:
    """`x` (..., D, H, W) rotated by k * 90 degrees about z (the D axis)."""
    return torch.rot90(x, int(k), dims=(-2, -1))


def draw_boxes(rng: np.random.Generator, shape: tuple[int, ...], p: SwinUNETRParams) -> list[Box]:
    """One cut-out pass: boxes (nnssl's `patch_rand_drop` geometry) drawn until
    their volumes sum to a budget drawn in [0, max_drop) of the volume; a box
    that would exceed the budget ends the pass, so the pass covers at most
    `max_drop`."""
    budget = rng.uniform(0, p.max_drop) * math.prod(shape)
    tol = [int(p.min_block * s) for s in shape]
    big = [max(int(p.max_block * s), t, 1) for s, t in zip(shape, tol, strict=True)]
    boxes: list[Box] = []
    total = 0
    while True:
        box = []
        for s, t, m in zip(shape, tol, big, strict=True):
            start = int(rng.integers(0, s - t + 1))
            box.append((start, min(start + int(rng.integers(t, m + 1)), s)))
        size = math.prod(b - a for a, b in box)
        if size == 0:
            continue
        if total + size > budget:
            return boxes
        boxes.append(tuple(box))  # type: ignore[arg-type]
        total += size


def box_mask(shape: tuple[int, ...], boxes: list[Box]) -> torch.Tensor:
    """The union of `boxes` as a bool (D, H, W) mask."""
    mask = torch.zeros(shape, dtype=torch.bool)
    for (z0, z1), (y0, y1), (x0, x1) in boxes:
        mask[z0:z1, y0:y1, x0:x1] = True
    return mask


def noise_fill(rng: np.random.Generator, x: torch.Tensor, boxes: list[Box]) -> torch.Tensor:
    """`x` (C, D, H, W) with each box replaced by Gaussian noise min-max
    normalised to [0, 1] (nnssl), in order."""
    x = x.clone()
    for (z0, z1), (y0, y1), (x0, x1) in boxes:
        noise = rng.standard_normal((x.shape[0], z1 - z0, y1 - y0, x1 - x0))
        noise = (noise - noise.min()) / max(noise.max() - noise.min(), 1e-12)
        x[:, z0:z1, y0:y1, x0:x1] = torch.from_numpy(noise).to(x.dtype)
    return x


def copy_fill(x: torch.Tensor, source: torch.Tensor, boxes: list[Box]) -> torch.Tensor:
    """`x` with each box taken from `source` (same shape)."""
    x = x.clone()
    for (z0, z1), (y0, y1), (x0, x1) in boxes:
        x[:, z0:z1, y0:y1, x0:x1] = source[:, z0:z1, y0:y1, x0:x1]
    return x


def view_draws(
    rng: np.random.Generator, shape: tuple[int, ...], p: SwinUNETRParams, copy: bool
) -> tuple[int, list[Box], list[Box]]:
    """One view's draws, in order: the rotation k, the noise boxes and (when
    a pair is there to copy from) the copied boxes."""
    k = int(rng.integers(4))
    noise = draw_boxes(rng, shape, p)
    copied = draw_boxes(rng, shape, p) if copy else []
    return k, noise, copied


def inpaint_loss(
    rec: torch.Tensor, target: torch.Tensor, anon: torch.Tensor | None
) -> torch.Tensor:
    """L1 over every voxel (nnssl), without the `anon` voxels when given."""
    keep = torch.ones_like(target) if anon is None else 1 - anon
    return per_sample_mean((rec - target).abs(), keep)


# -- the network -----------------------------------------------------------------


def reconstruction_head(features: list[int], upsample: list[bool], out: int) -> nn.Sequential:
    """A skip-free decoder: conv features[i] -> features[i + 1] (the last to
    `out`), then InstanceNorm, LeakyReLU and x2 upsampling where `upsample[i]`."""
    widths = [*features, out]
    layers: list[nn.Module] = []
    for i, up in enumerate(upsample):
        layers.append(nn.Conv3d(widths[i], widths[i + 1], kernel_size=3, padding=1))
        if up:
            layers += [
                nn.InstanceNorm3d(widths[i + 1]),
                nn.LeakyReLU(),
                nn.Upsample(scale_factor=2, mode="trilinear", align_corners=False),
            ]
    return nn.Sequential(*layers)


class SwinUNETRNet(nn.Module):
    """Backbone plus the three heads; ``forward(x)`` returns
    (reconstruction, rotation logits, contrast embedding)."""

    def __init__(self, arch: str, patch: int, p: SwinUNETRParams) -> None:
        super().__init__()
        primus = models.family(arch) == "primus"
        self.backbone = heads.encoder_only(arch, patch, p.drop_path if primus else 0.0)
        if primus:
            cfg = models.arch_config(arch)
            ups = int(round(math.log2(cfg.token)))
            feats = [cfg.embed_dim // 2**i for i in range(ups + 1)]
            flags = [True] * ups + [False]
            self.grid = (patch // cfg.token,) * 3
        else:
            enc = self.backbone.encoder
            feats = list(enc.output_channels)[::-1]
            flags = [max(s) > 1 for s in list(enc.strides)[::-1]]
        width = feats[0]
        self.rotation = nn.Linear(width, 4)
        self.contrast = nn.Linear(width, p.contrast_dim)
        self.reconstruct = reconstruction_head(feats, flags, 1)

    def bottom(self, x: torch.Tensor) -> torch.Tensor:
        """The lowest-resolution features (b, C, d, h, w)."""
        if hasattr(self.backbone, "encoder"):
            out = self.backbone.encoder(x)
            return out[-1] if isinstance(out, (list, tuple)) else out
        tokens = heads.token_features(self.backbone, x)  # (b, N, C), (d, h, w) order
        return tokens.transpose(1, 2).reshape(x.shape[0], -1, *self.grid)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        grid = self.bottom(x)
        tokens = grid.flatten(2).transpose(1, 2)
        return self.reconstruct(grid), self.rotation(tokens[:, 0]), self.contrast(tokens[:, 1])


# -- the method ------------------------------------------------------------------


class SwinUNETR(Method):
    name = "swinunetr"
    Params = SwinUNETRParams
    families = ("resenc", "primus")
    reconstruction = True
    contrastive = True

    @classmethod
    def recipe(cls, family: str) -> Recipe:
        if family == "primus":
            return dataclasses.replace(PRIMUS_RECIPE, source="nnssl SwinUNETREvaTrainer")
        return dataclasses.replace(
            RESENC_RECIPE, source="nnssl SwinUNETRTrainer (AbstractBaseTrainer defaults)"
        )

    pairs_samples = True

    def voxels_per_sample(self) -> int:
        return 2 * self.patch**3  # two views

    def check(self) -> None:
        p = self.params
        if not 0.0 <= p.max_drop <= 0.5:
            raise InputError(f"--set max_drop={p.max_drop}: must be in [0, 0.5]")
        if not 0.0 <= p.min_block <= p.max_block <= 1.0:
            raise InputError("--set min_block/max_block: need 0 <= min_block <= max_block <= 1")
        if p.temperature <= 0:
            raise InputError(f"--set temperature={p.temperature}: must be > 0")
        if p.contrast_dim < 1:
            raise InputError(f"--set contrast_dim={p.contrast_dim}: must be >= 1")

    def build(self) -> nn.Module:
        return SwinUNETRNet(self.arch, self.patch, self.params)

    def export(self, net: nn.Module) -> nn.Module:
        return models.unwrap(net).backbone

    def prepare(self, batch: Batch, ctx: StepContext) -> Batch:
        """Adds "views" (b, 2, D, H, W) (the network's inputs), "targets" (the
        rotated, uncut views), "rotations" (b, 2) int64 and, with
        ``--anon-aware``, "anon_views" (the rotated anonymization masks)."""
        image, index = batch["image"], batch["index"]
        shape = tuple(int(s) for s in image.shape[2:])
        pos = pair_positions(index)
        views, targets, rots, anons = [], [], [], []
        for v in range(2):
            rngs = [ctx.rng(g, salt=v) for g in index]
            draws = [
                view_draws(r, shape, self.params, j != i)
                for i, (r, j) in enumerate(zip(rngs, pos, strict=True))
            ]
            rotated = [rotate_z(image[i], d[0]) for i, d in enumerate(draws)]
            for i, (k, noise, copied) in enumerate(draws):
                cut = copy_fill(noise_fill(rngs[i], rotated[i], noise), rotated[pos[i]], copied)
                views.append(cut)
                rots.append(k)
                if ctx.anon_aware:
                    anons.append(rotate_z(batch["anon"][i], k))
            targets += rotated
        b = len(index)
        out = dict(batch)
        out["views"] = _by_sample(views, b)
        out["targets"] = _by_sample(targets, b)
        out["rotations"] = torch.tensor(rots, dtype=torch.int64).view(2, b).t().contiguous()
        if ctx.anon_aware:
            out["anon_views"] = _by_sample(anons, b)
        return out

    def loss(self, net: nn.Module, batch: Batch, ctx: StepContext) -> torch.Tensor:
        p = self.params
        x = _both(batch["views"])
        target = _both(batch["targets"])
        rotations = torch.cat([batch["rotations"][:, 0], batch["rotations"][:, 1]])
        rec, rot_logits, emb = net(x)
        anon = _both(batch["anon_views"]) if ctx.anon_aware else None
        inpaint = inpaint_loss(rec.float(), target, anon)
        rotation = F.cross_entropy(rot_logits.float(), rotations)
        n = batch["views"].shape[0]
        emb = emb.float()
        world = ctx.world if torch.distributed.is_available() else 1
        z1, z2 = heads.gather(emb[:n], world), heads.gather(emb[n:], world)
        contrast = nt_xent(z1, z2, p.temperature)
        return p.w_inpaint * inpaint + p.w_rotation * rotation + p.w_contrast * contrast


def _by_sample(views: list[torch.Tensor], b: int) -> torch.Tensor:
    """[view 0 of samples 0..b-1, view 1 of ...] (each (1, ...)) -> (b, 2, ...)."""
    return torch.stack([torch.cat([views[i], views[b + i]]) for i in range(b)])


def _both(x: torch.Tensor) -> torch.Tensor:
    """(b, 2, ...) -> (2b, 1, ...): every sample's first view, then every second."""
    return torch.cat([x[:, 0:1], x[:, 1:2]])
