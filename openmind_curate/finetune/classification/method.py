"""Classification as a method of the one trainer loop (`train.trainer`).

The loop brings the optimizer and schedule, accumulation, DDP, signals,
checkpoints with bit-exact resume, and logs; this brings the network (the
classifier of `network`) and the loss (cross-entropy of the batch's labels,
the framework's ``CrossEntropyLoss`` without label smoothing). A batch is
whole volumes with their class indices ("label", (b,)): the volumes' files
("volumes", read per micro-batch) or the volumes themselves ("image", (b, 1,
D, H, W)); there is nothing to prepare. It exports nothing through the loop's
encoder files: the run writes the whole classifier itself (`run`).

The recipe is appendix C.2's: AdamW at lr 1e-4, weight decay 1e-2, a
20-epoch warm-up then cosine annealing (`trainer.EpochLR`'s ``cosine``), on
both the encoder and the head; betas and eps are torch's defaults (the
framework passes none); no gradient clipping (the framework sets none). The
batch is the paper's for brain MRI (RSN, 160x192x192): ResEnc-L 4 x 48
accumulated, Primus-M 2 x 192 (`BATCH`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from openmind_curate.errors import InputError
from openmind_curate.finetune.classification import network, volumes
from openmind_curate.finetune.plans import divisor_of, nearest_multiple
from openmind_curate.train.methods import registry
from openmind_curate.train.methods.base import Batch, Method, Recipe, StepContext

#: (micro-batch, accumulation) per family: the paper's RSN setting (C.2).
BATCH = {"resenc": (4, 48), "primus": (2, 192)}
#: The paper's RSN size: whole volumes are resized to it.
RESIZE = (160, 192, 192)


@dataclass(frozen=True)
class ClassifyParams:
    """What the classifier is; the run fills every field."""

    classes: int = 2
    resize: tuple[int, int, int] = RESIZE
    frozen: bool = False  # linear probing: only the head trains
    pretrained: str = ""  # the checkpoint whose encoder it starts from; "" = none
    architecture: dict[str, Any] = field(default_factory=dict)  # nnU-Net plans' entry


@registry.register
class Classify(Method):
    name: ClassVar[str] = "classify"
    Params: ClassVar[type] = ClassifyParams

    @classmethod
    def recipe(cls, family: str) -> Recipe:
        micro, accumulate = BATCH.get(family, BATCH["resenc"])
        return Recipe(
            optimizer="adamw",
            lr=1e-4,
            weight_decay=1e-2,
            betas=(0.9, 0.999),
            eps=1e-8,
            warmup_epochs=20,
            grad_clip=0.0,
            patch=RESIZE[0],
            global_batch=micro * accumulate,
            source="the paper, appendix C.2 (RSN); betas and eps torch's defaults",
        )

    def check(self) -> None:
        p = self.params
        if p.classes < 2:
            raise InputError(f"classification needs 2 or more classes, got {p.classes}")
        if not p.architecture:
            raise ValueError("ClassifyParams.architecture is unset")
        div = divisor_of(p.architecture)
        if len(p.resize) != 3 or any(s < div or s % div for s in p.resize):
            near = tuple(nearest_multiple(s, div) for s in p.resize)
            raise InputError(
                f"--resize {','.join(map(str, p.resize))}: every edge must be a multiple of "
                f"{div} for this network; the nearest is {','.join(map(str, near))}"
            )

    def crop(self) -> tuple[int, int, int]:
        return tuple(self.params.resize)

    def voxels_per_sample(self) -> int:
        return math.prod(self.params.resize)

    def build(self) -> nn.Module:
        from openmind_curate.train.nnssl import read_pretrained

        p = self.params
        pretrained = read_pretrained(p.pretrained) if p.pretrained else None
        return network.build_classifier(
            p.architecture, p.classes, p.resize, frozen=p.frozen, pretrained=pretrained
        )

    def loss(self, net: nn.Module, batch: Batch, ctx: StepContext) -> torch.Tensor:
        """Cross-entropy of the micro-batch; its volumes are read here when the
        batch names their files (`batches.EpochBatches`), so only one
        micro-batch is in memory at a time."""
        image = batch.get("image")
        if image is None:
            image = volumes.load_batch(batch["volumes"]).to(ctx.device, non_blocking=True)
        logits = net(image)
        return F.cross_entropy(logits.float(), batch["label"].long())

    def export(self, net: nn.Module) -> None:
        return None
