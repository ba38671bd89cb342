"""A fold's training batches: dataset epochs over whole volumes.

Epoch e's order is a permutation of the fold's training images seeded by
(seed, e); step k of the epoch takes the next ``global_batch`` images of that
order and wraps around at its end, so the last step of an epoch is filled up
from the epoch's start and every step has the same size. A batch is a pure
function of its step (what the trainer's exact resume needs), and it carries
the volumes' file names, not the volumes: the method loads each micro-batch
when it trains on it (`volumes.load_batch`), so a step of 4 x 48 volumes of
160x192x192 (4.5 GB in float32) never sits in memory whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from openmind_curate.finetune.classification.volumes import array_path
from openmind_curate.train.loader import rank_slice

#: Separates the epoch order's seed from every other draw.
ORDER_SALT = 0x4F52  # "OR"


@dataclass
class EpochBatches:
    """``batches(step, rank, world)`` for `train.trainer.train`."""

    root: Path
    case_ids: list[str]
    labels: np.ndarray
    global_batch: int
    iters_per_epoch: int
    seed: int

    def positions(self, step: int) -> np.ndarray:
        """The step's images, as positions in `case_ids`."""
        epoch, k = divmod(step, self.iters_per_epoch)
        n = len(self.case_ids)
        order = np.random.default_rng([self.seed, epoch, ORDER_SALT]).permutation(n)
        return order[(k * self.global_batch + np.arange(self.global_batch)) % n]

    def __call__(self, step: int, rank: int, world: int) -> dict[str, Any]:
        mine = rank_slice(self.global_batch, rank, world)
        pos = self.positions(step)[mine.start : mine.stop]
        return {
            "volumes": [str(array_path(self.root, self.case_ids[p])) for p in pos],
            "label": torch.as_tensor(self.labels[pos], dtype=torch.long),
            "index": [step * self.global_batch + j for j in mine],
            "case_id": [self.case_ids[p] for p in pos],
        }
