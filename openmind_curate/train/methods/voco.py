"""VoCo (volume contrast): a random crop's similarity to each base crop
should be the share of it that lies in that base crop.

The loader cuts a region of `grid` x patch per axis (4x4x1 x 64 = 256x256x64,
array axes); `prepare` splits it into the grid's non-overlapping base crops
and draws `n_random` patch-sized crops uniformly inside it, with their
overlap targets (the volume shared with each base crop / the crop volume;
each row sums to 1). All crops pass the encoder and a projection head
(Fig. 7) in one forward. The loss is nnssl's `VoCoLoss` (after VoCo's
released code rather than its paper's Eq. 3):

- prediction: s = ReLU(cos(random, base)), the base side detached; where the
  target t > 0, -log(1 - |s - t|) weighted by t; where t = 0, s^2;
- regulariser: the mean ReLU(cos) over distinct base pairs, towards 0;
- loss = prediction + regulariser (weights 1, 1), the mean over samples.

Defaults (the paper, appendix D.1): grid 4x4x1 of 64^3 base crops, n = 4,
no region edge over 256 mm (256 voxels at the 1 mm pre-training spacing:
`check` refuses more), ResEnc-L at SGD lr 1e-2, wd 3e-5, batch 8. Primus-M:
nnssl's `VoCoEvaTrainer` (AdamW 3e-4, wd 5e-2, 50 warm-up epochs, drop-path
0.2). Head widths 2048/2048: nnssl's `VoCoArchitecture`. Every crop is
augmented as nnssl's `VocoTransform` does (`bg_augment`; not on validation).

Difference from nnssl: its two prediction terms are pooled over the batch;
here each sample's are, then averaged (the contract's per-sample mean; the
weighted term is the same, since each sample's targets sum to n).
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from openmind_curate.errors import InputError
from openmind_curate.train import models
from openmind_curate.train.methods.base import (
    PRIMUS_RECIPE,
    RESENC_RECIPE,
    VAL_STREAM,
    Batch,
    Method,
    Recipe,
    StepContext,
)
from openmind_curate.train.methods.simclr import projected_encoder

#: Salts of a sample's draws: the random crops' places, each crop's augmentation.
PLACE_SALT = 0x564F4350  # "VOCP"
CROP_SALT = 0x564F4341  # "VOCA" (+ crop number)
#: The largest region edge in mm (the paper: "never more than 25.6 cm").
MAX_EXTENT_MM = 256


@dataclass(frozen=True)
class VoCoParams:
    grid: tuple[int, int, int] = (4, 4, 1)  # base crops per array axis
    n_random: int = 4
    pred_weight: float = 1.0
    reg_weight: float = 1.0
    augment: bool = True  # nnssl's crop augmentations (never on validation)
    proj_hidden: int = 2048
    proj_out: int = 2048
    drop_path: float = 0.2  # Primus only (nnssl's VoCoEvaTrainer)


def base_corners(grid: tuple[int, ...], base: int) -> np.ndarray:
    """Corners (m, 3) of the grid's base crops, the last axis fastest."""
    return np.array(list(itertools.product(*(range(g) for g in grid)))) * base


def random_corners(rng: np.random.Generator, region: tuple[int, ...], size: int, n: int):
    """Corners (n, 3) of `size`^3 crops placed uniformly inside `region`."""
    return np.array([[rng.integers(0, r - size + 1) for r in region] for _ in range(n)])


def overlap_targets(crops: np.ndarray, bases: np.ndarray, size: int) -> np.ndarray:
    """(n, m): the share of each crop's volume (`size`^3 at `crops`) that lies
    in each base crop (`size`^3 at `bases`)."""
    shift = np.abs(crops[:, None, :] - bases[None, :, :])
    return np.prod(np.clip(size - shift, 0, None), axis=-1) / float(size**3)


def voco_terms(
    pred: torch.Tensor, base_sim: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (prediction, regulariser) from cosine similarities: `pred`
    (b, n, m) random-to-base, `base_sim` (b, m, m) base-to-base, `target`
    (b, n, m) the overlaps."""
    s = F.relu(pred)
    hit = (target > 0).to(s.dtype)
    pos = (-torch.log(1 - (s - target).abs() + 1e-6) * target).sum((1, 2))
    pos = pos / target.sum((1, 2)).clamp(min=1e-6)
    neg = (s**2 * (1 - hit)).sum((1, 2)) / (1 - hit).sum((1, 2)).clamp(min=1.0)
    m = base_sim.shape[-1]
    pairs = torch.ones(m, m, device=s.device).triu(diagonal=1)
    reg = (F.relu(base_sim) * pairs).sum((1, 2)) / pairs.sum().clamp(min=1.0)
    return pos + neg, reg


def voco_loss(
    base: torch.Tensor, crops: torch.Tensor, target: torch.Tensor, weights=(1.0, 1.0)
) -> torch.Tensor:
    """VoCo's loss of projections `base` (b, m, d) and `crops` (b, n, d)
    against `target` (b, n, m): the mean over samples."""
    base, crops = base.float(), crops.float()
    pred = F.cosine_similarity(base.detach()[:, None], crops[:, :, None], dim=-1)
    base_sim = F.cosine_similarity(base[:, None], base[:, :, None], dim=-1)
    p, r = voco_terms(pred, base_sim, target.float())
    return (weights[0] * p + weights[1] * r).mean()


class VoCo(Method):
    name = "voco"
    Params = VoCoParams
    families = ("resenc", "primus")
    reconstruction = False
    #: VoCo's loss is per sample (no negatives across samples), so it
    #: accumulates exactly and keeps the paper's batch 8 through accumulation.
    contrastive = False

    @classmethod
    def recipe(cls, family: str) -> Recipe:
        if family == "primus":
            return dataclasses.replace(
                PRIMUS_RECIPE, patch=64, source="nnssl's VoCoEvaTrainer (optimizer)"
            )
        # nnssl's VoCoTrainer does not clip the gradient (its clip line is commented out)
        return dataclasses.replace(
            RESENC_RECIPE, patch=64, grad_clip=0.0, source="the paper, appendix D.1; nnssl (clip)"
        )

    def check(self) -> None:
        p = self.params
        if len(p.grid) != 3 or min(p.grid) < 1:
            raise InputError(f"voco grid {p.grid}: needs 3 counts, each >= 1")
        if max(p.grid) < 2:
            raise InputError(f"voco grid {p.grid}: needs at least 2 base crops along an axis")
        if p.n_random < 1:
            raise InputError(f"voco n_random must be >= 1, got {p.n_random}")
        if max(self.crop()) > MAX_EXTENT_MM:
            raise InputError(
                f"voco region {self.crop()} (grid {p.grid} x patch {self.patch}) exceeds "
                f"{MAX_EXTENT_MM} mm along an axis (1 mm voxels); use a smaller grid or patch"
            )

    def voxels_per_sample(self) -> int:
        grid = self.params.grid
        return (grid[0] * grid[1] * grid[2] + self.params.n_random) * self.patch**3

    def crop(self) -> tuple[int, int, int]:
        return tuple(g * self.patch for g in self.params.grid)  # type: ignore[return-value]

    def build(self) -> nn.Module:
        p = self.params
        return projected_encoder(self.arch, self.patch, p.proj_hidden, p.proj_out, p.drop_path)

    def prepare(self, batch: Batch, ctx: StepContext) -> Batch:
        """ "crops" (b, m + n, 1, p, p, p): the m base crops, then the n random
        ones; "overlaps" (b, n, m); "crop_at" (b, n, 3). The region is dropped."""
        p, v = self.params, self.patch
        image = batch["image"]
        bases = base_corners(p.grid, v)
        crops, targets, places = [], [], []
        for i, index in enumerate(batch["index"]):
            at = random_corners(ctx.rng(index, PLACE_SALT), image.shape[2:], v, p.n_random)
            cuts = []
            for k, (x, y, z) in enumerate(np.concatenate([bases, at]).tolist()):
                cut = image[i, :, x : x + v, y : y + v, z : z + v]
                if p.augment and ctx.stream != VAL_STREAM:
                    from openmind_curate.train.methods.bg_augment import augment

                    cut = augment(cut, ctx.seed_of(index, CROP_SALT + k))
                cuts.append(cut.contiguous())
            crops.append(torch.stack(cuts))
            targets.append(torch.from_numpy(overlap_targets(at, bases, v)).float())
            places.append(torch.from_numpy(at))
        keep = {k: batch[k] for k in ("case_id", "index") if k in batch}
        return {
            **keep,
            "crops": torch.stack(crops),
            "overlaps": torch.stack(targets),
            "crop_at": torch.stack(places),
        }

    def loss(self, net: nn.Module, batch: Batch, ctx: StepContext) -> torch.Tensor:
        crops = batch["crops"]
        b, total = crops.shape[:2]
        z = net(crops.flatten(0, 1)).view(b, total, -1)
        m = total - self.params.n_random
        w = (self.params.pred_weight, self.params.reg_weight)
        return voco_loss(z[:, :m], z[:, m:], batch["overlaps"], w)

    def export(self, net: nn.Module) -> nn.Module:
        return models.unwrap(net).backbone
