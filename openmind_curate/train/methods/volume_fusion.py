"""Volume Fusion (Wang et al., MIS-FM): segment how two volumes were mixed.

Two volumes I_f and I_b are fused voxel-wise, X = alpha * I_f + (1 - alpha) * I_b,
with alpha drawn from {0, 1/K, ..., 1}; the network segments the K + 1
classes (class = alpha * K). The coefficient map is painted box by box
(`coefficient_labels`): a random number of boxes of random sizes, each with a
random class, later boxes overwriting earlier ones, so a class's region can
have any shape; voxels no box covers have alpha 0 (pure I_b).

Following nnssl's `VolumeFusionTrainer` / `volume_fusion_transform`:
K = 4; 10..39 boxes per sample (nnssl's ``randint(10, 40)``, upper bound
excluded); box edges 8 .. int(0.625 * edge) voxels per axis; the loss is
nnssl's DC_and_CE_loss (cross-entropy plus soft Dice over every class,
background included, per sample, smooth 1e-5; its value is CE - Dice).

Pairs. nnssl loads a doubled batch and fuses its first half (foreground)
with its second half (background). Here the loader's batch is fused with
itself: the sample of global index g takes I_f = its own crop and I_b = the
crop of index g ^ 1 (0<->1, 2<->3, ...), so every crop is once foreground
and once background, and a pair is the same for any number of ranks when
the per-rank batch is even (the loader's rank slices then start at even
indices). A sample without its pair in the batch takes the next sample of
the batch; a batch of one fuses a crop with itself mirrored along all axes.

Optimisation: ResEnc-L trains with lr 1e-3 and wd 3e-5 (appendix D.2, the
tuned values) with nnssl's SGD (Nesterov, momentum 0.99, `AbstractBaseTrainer`);
Primus-M with nnssl's `VolumeFusionEvaTrainer` recipe (AdamW 3e-4, wd 5e-2,
50 warm-up epochs, drop-path 0.2). The paper fuses centre crops
(appendix D.2): `centre_crop` makes the loader centre each crop on its
volume (the loader's augmentation still varies it).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from openmind_curate.errors import InputError
from openmind_curate.train import models
from openmind_curate.train.methods.base import (
    PRIMUS_RECIPE,
    Batch,
    Method,
    Recipe,
    StepContext,
)

#: Soft Dice's smoothing term (nnssl's VolumeFusionTrainer.build_loss).
DICE_SMOOTH = 1e-5


@dataclass(frozen=True)
class VolumeFusionParams:
    k: int = 4  # nonzero fusion coefficients: alpha in {0, 1/k, ..., 1}, k + 1 classes
    boxes: tuple[int, int] = (10, 39)  # boxes per sample, both ends included (nnssl)
    box_min: int = 8  # smallest box edge in voxels (nnssl)
    box_max_frac: float = 0.625  # largest box edge as a fraction of the crop edge (nnssl)
    drop_path: float = 0.2  # Primus: stochastic depth (nnssl's VolumeFusionEvaTrainer)


# -- the algorithm (pure) --------------------------------------------------------


def paint_boxes(
    shape: tuple[int, int, int],
    starts: np.ndarray,
    sizes: np.ndarray,
    classes: np.ndarray,
) -> np.ndarray:
    """A (D, H, W) uint8 class map: 0, then box i (``starts[i]``, ``sizes[i]``,
    each 3 ints) set to ``classes[i]`` in order, later boxes on top."""
    out = np.zeros(shape, np.uint8)
    for (z, y, x), (d, h, w), c in zip(starts, sizes, classes, strict=True):
        out[z : z + d, y : y + h, x : x + w] = c
    return out


def coefficient_labels(
    rng: np.random.Generator, shape: tuple[int, int, int], p: VolumeFusionParams
) -> np.ndarray:
    """One sample's class map (class = alpha * k), drawn from `rng`."""
    n = int(rng.integers(p.boxes[0], p.boxes[1] + 1))
    classes = rng.integers(0, p.k + 1, size=n)
    sizes = np.empty((n, 3), np.int64)
    starts = np.empty((n, 3), np.int64)
    for axis, edge in enumerate(shape):
        lo = min(p.box_min, edge)
        hi = min(max(lo, int(p.box_max_frac * edge)), edge)
        sizes[:, axis] = rng.integers(lo, hi + 1, size=n)
        starts[:, axis] = rng.integers(0, edge - sizes[:, axis] + 1)
    return paint_boxes(shape, starts, sizes, classes)


def fuse(fg: torch.Tensor, bg: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """X = alpha * fg + (1 - alpha) * bg with alpha = labels / k."""
    alpha = labels.to(fg.dtype) / k
    return alpha * fg + (1 - alpha) * bg


def pair_positions(index: list[int]) -> list[int]:
    """For each position of a batch of global indices, the position of its
    pair g ^ 1; if that is not in the batch, the next position (itself in a
    batch of one)."""
    where = {int(g): i for i, g in enumerate(index)}
    n = len(index)
    return [where.get(int(g) ^ 1, (i + 1) % n) for i, g in enumerate(index)]


def fusion_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """nnssl's DC_and_CE_loss: cross-entropy plus soft Dice (per sample and
    class, every class, smooth 1e-5), returned as CE - mean Dice.
    `logits` (b, C, ...) float32, `labels` (b, ...) int64."""
    ce = F.cross_entropy(logits, labels)
    probs = torch.softmax(logits, dim=1)
    onehot = F.one_hot(labels, logits.shape[1]).movedim(-1, 1).to(probs.dtype)
    axes = tuple(range(2, logits.dim()))
    intersect = (probs * onehot).sum(axes)
    total = probs.sum(axes) + onehot.sum(axes)
    dice = (2 * intersect + DICE_SMOOTH) / (total + DICE_SMOOTH).clamp(min=1e-8)
    return ce - dice.mean()


# -- the method ------------------------------------------------------------------


class VolumeFusion(Method):
    name = "volume-fusion"
    Params = VolumeFusionParams
    families = ("resenc", "primus")
    reconstruction = False
    #: The paper fuses centre crops (appendix D.2); the loader centres them.
    centre_crop: ClassVar[bool] = True

    @classmethod
    def recipe(cls, family: str) -> Recipe:
        if family == "primus":
            return dataclasses.replace(
                PRIMUS_RECIPE, source="nnssl VolumeFusionEvaTrainer (AdamW 3e-4, wd 5e-2)"
            )
        return Recipe(
            lr=1e-3,
            weight_decay=3e-5,
            source="the paper, appendix D.2 (lr 1e-3, wd 3e-5); SGD as nnssl's AbstractBaseTrainer",
        )

    pairs_samples = True

    def check(self) -> None:
        p = self.params
        if not 1 <= p.k <= 255:
            raise InputError(f"--set k={p.k}: must be in 1..255")
        if len(p.boxes) != 2 or not 0 <= p.boxes[0] <= p.boxes[1]:
            raise InputError(f"--set boxes={p.boxes}: write min,max with 0 <= min <= max")
        if p.box_min < 1:
            raise InputError(f"--set box_min={p.box_min}: must be >= 1")
        if not 0.0 < p.box_max_frac <= 1.0:
            raise InputError(f"--set box_max_frac={p.box_max_frac}: must be in (0, 1]")

    def build(self) -> nn.Module:
        primus = models.family(self.arch) == "primus"
        drop = self.params.drop_path if primus else 0.0
        return models.build(
            self.arch, out_channels=self.params.k + 1, patch=self.patch, drop_path=drop
        )

    def prepare(self, batch: Batch, ctx: StepContext) -> Batch:
        """Fuse each crop with its pair's; "image" becomes the fused input and
        "label" (b, 1, ...) uint8 the class map."""
        image = batch["image"]
        shape = tuple(int(s) for s in image.shape[2:])
        labels = torch.stack(
            [
                torch.from_numpy(coefficient_labels(ctx.rng(g), shape, self.params))
                for g in batch["index"]
            ]
        )[:, None]
        pos = pair_positions(batch["index"])
        bg = torch.stack(
            [image[j] if j != i else image[i].flip((1, 2, 3)) for i, j in enumerate(pos)]
        )
        out = dict(batch)
        out["image"] = fuse(image, bg, labels, self.params.k)
        out["label"] = labels
        return out

    def loss(self, net: nn.Module, batch: Batch, ctx: StepContext) -> torch.Tensor:
        logits = net(batch["image"])
        return fusion_loss(logits.float(), batch["label"][:, 0].long())
