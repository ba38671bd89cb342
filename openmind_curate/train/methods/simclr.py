"""SimCLR: two augmented views of one crop should agree, views of others not.

Per sample the loader cuts a 192x192x64 crop (nnssl's `simCLRTrainer`
patch size, array axes in that order); `prepare` takes two patch-sized
(64^3) views of it whose volumes overlap by at least `min_overlap` and
augments each independently with nnssl's batchgenerators pipeline
(`bg_augment`). The network is an encoder and a projection head (Fig. 7:
ResEnc-L's pooled skips concatenated, Primus-M's tokens averaged); the loss
is NT-Xent (temperature 0.5, cosine similarity) over the 2B projections of
the whole global batch: under DDP they are gathered over the ranks, so every
view's negatives are the other 2B - 2 views. Only the encoder is exported.

Defaults: global batch 32, crop 192x192x64, 64^3 views, overlap >= 50%,
temperature 0.5 (the paper, appendix D.4). The appendix gives no optimizer:
ResEnc-L uses nnssl's `simCLRTrainer` (its `AbstractBaseTrainer` defaults:
SGD Nesterov, momentum 0.99, lr 1e-2, wd 3e-5), Primus-M nnssl's
`SimCLREvaTrainer` (AdamW 3e-4, wd 5e-2, betas (0.9, 0.98), 50 warm-up
epochs, drop-path 0.2). The projection head's widths (2048 hidden, 2048 out)
are nnssl's `VoCoArchitecture`, which its SimCLR trainers reuse.

Differences from nnssl. Its "minimal crop overlap" bounds the shift per axis
(half a view each, which allows a volume overlap down to 1/8); here the
overlap is the volume fraction, as the paper's text reads. Validation views
are not augmented (nnssl's ``aug="none"``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from openmind_curate.errors import InputError
from openmind_curate.train import models
from openmind_curate.train.methods import heads
from openmind_curate.train.methods.base import (
    PRIMUS_RECIPE,
    RESENC_RECIPE,
    VAL_STREAM,
    Batch,
    Method,
    Recipe,
    StepContext,
)
from openmind_curate.train.methods.heads import nt_xent

#: Salts of a sample's draws: where its views lie, and each view's augmentation.
PLACE_SALT = 0x53434C50  # "SCLP"
VIEW_SALT = 0x53434C56  # "SCLV" (+ view number)


@dataclass(frozen=True)
class SimCLRParams:
    crop: tuple[int, int, int] = (192, 192, 64)  # the crop per sample, array axes
    min_overlap: float = 0.5  # of a view's volume, shared by the two views
    temperature: float = 0.5
    augment: bool = True  # nnssl's crop augmentations (never on validation)
    proj_hidden: int = 2048
    proj_out: int = 2048
    drop_path: float = 0.2  # Primus only (nnssl's SimCLREvaTrainer)


class ProjectedEncoder(nn.Module):
    """An encoder and a projection head: ``forward(x)`` maps crops (n, 1, p,
    p, p) to projections (n, out). `backbone` is `heads.encoder_only`."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(heads.global_features(self.backbone, x))


def projected_encoder(arch: str, patch: int, hidden: int, out: int, drop_path: float) -> nn.Module:
    """A freshly initialised `ProjectedEncoder` for `arch` at `patch`^3 inputs."""
    dp = drop_path if models.family(arch) == "primus" else 0.0
    backbone = heads.encoder_only(arch, patch, drop_path=dp)
    return ProjectedEncoder(backbone, heads.projection(heads.feature_width(arch), hidden, out))


def overlap_fraction(a: np.ndarray, b: np.ndarray, size: tuple[int, ...]) -> float:
    """The shared volume of two boxes of `size` at corners `a` and `b`, as a
    fraction of one box's volume."""
    shared = [max(0, s - abs(int(x) - int(y))) for x, y, s in zip(a, b, size, strict=True)]
    return float(np.prod(shared) / np.prod(size))


def view_corners(
    rng: np.random.Generator, crop: tuple[int, ...], view: int, min_overlap: float
) -> np.ndarray:
    """Corners (2, 3) of two `view`^3 boxes inside `crop` sharing at least
    `min_overlap` of their volume: the first uniform, the second uniform
    among the placements that overlap enough (rejection; the first's own
    place after 1000 misses, which a 50% bound practically never reaches)."""
    size = (view,) * len(crop)
    first = np.array([rng.integers(0, c - view + 1) for c in crop])
    # no axis can shift by more than (1 - min_overlap) of the view
    reach = int(np.floor(view * (1.0 - min_overlap)))
    lo = np.maximum(0, first - reach)
    hi = np.minimum(np.array(crop) - view, first + reach)
    for _ in range(1000):
        second = np.array([rng.integers(a, b + 1) for a, b in zip(lo, hi, strict=True)])
        if overlap_fraction(first, second, size) >= min_overlap:
            return np.stack([first, second])
    return np.stack([first, first])


class SimCLR(Method):
    name = "simclr"
    Params = SimCLRParams
    families = ("resenc", "primus")
    reconstruction = False
    contrastive = True

    @classmethod
    def recipe(cls, family: str) -> Recipe:
        base = PRIMUS_RECIPE if family == "primus" else RESENC_RECIPE
        source = "SimCLREvaTrainer" if family == "primus" else "simCLRTrainer (AbstractBaseTrainer)"
        return dataclasses.replace(
            base,
            patch=64,
            global_batch=32,
            # nnssl's simCLRTrainer clips the gradient norm at 0.1 (its Eva trainer at 1)
            grad_clip=1.0 if family == "primus" else 0.1,
            source=f"the paper, appendix D.4 (batch, views); nnssl's {source} (optimizer, clip)",
        )

    def check(self) -> None:
        p = self.params
        if len(p.crop) != 3 or any(c < self.patch for c in p.crop):
            raise InputError(f"simclr crop {p.crop}: needs 3 edges, each >= the patch {self.patch}")
        if not 0.0 < p.min_overlap <= 1.0:
            raise InputError(f"simclr min_overlap must be in (0, 1], got {p.min_overlap}")
        if p.temperature <= 0:
            raise InputError(f"simclr temperature must be > 0, got {p.temperature}")

    def voxels_per_sample(self) -> int:
        return 2 * self.patch**3  # two views

    def crop(self) -> tuple[int, int, int]:
        return tuple(int(c) for c in self.params.crop)  # type: ignore[return-value]

    def build(self) -> nn.Module:
        p = self.params
        return projected_encoder(self.arch, self.patch, p.proj_hidden, p.proj_out, p.drop_path)

    def prepare(self, batch: Batch, ctx: StepContext) -> Batch:
        """Two views per sample (b, 2, 1, p, p, p) and their corners (b, 2, 3);
        the full crops are dropped (they never reach the device)."""
        p, v = self.params, self.patch
        image = batch["image"]
        views, corners = [], []
        for i, index in enumerate(batch["index"]):
            at = view_corners(ctx.rng(index, PLACE_SALT), image.shape[2:], v, p.min_overlap)
            pair = []
            for k, (x, y, z) in enumerate(at.tolist()):
                cut = image[i, :, x : x + v, y : y + v, z : z + v]
                if p.augment and ctx.stream != VAL_STREAM:
                    from openmind_curate.train.methods.bg_augment import augment

                    cut = augment(cut, ctx.seed_of(index, VIEW_SALT + k))
                pair.append(cut.contiguous())
            views.append(torch.stack(pair))
            corners.append(torch.from_numpy(at))
        keep = {k: batch[k] for k in ("case_id", "index") if k in batch}
        return {**keep, "views": torch.stack(views), "view_at": torch.stack(corners)}

    def loss(self, net: nn.Module, batch: Batch, ctx: StepContext) -> torch.Tensor:
        views = batch["views"]
        b = views.shape[0]
        z = net(views.flatten(0, 1)).float().view(b, 2, -1)
        z = heads.gather(z, ctx.world)  # the whole global batch's views
        return nt_xent(z[:, 0], z[:, 1], self.params.temperature)

    def export(self, net: nn.Module) -> nn.Module:
        return models.unwrap(net).backbone
