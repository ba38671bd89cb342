"""The five fine-tuning schedules of the paper (appendix C.1, Fig. 6), as closed forms.

``E`` = total epochs, ``W`` = stage length, ``H = W // 2``, ``e`` = epoch
counted from 0, ``lr`` = the peak learning rate and
``poly(x, n) = lr * (1 - x / n) ** 0.9`` (nnU-Net's PolyLR). A schedule is a
list of stages; each stage trains the decoder only or the whole network, and
either builds a fresh optimizer when it starts or keeps the previous stage's
(and with it SGD's momentum).

- ``default``:  ``poly(e, E)``, the whole network, one optimizer.
- ``frozen``:   ``poly(e, E)``, the decoder only, one optimizer.
- ``warmup``:   the whole network at ``lr * (e + 1) / W`` for ``e < W``, then
  ``poly(e - W, E - W)`` with the same optimizer. (The authors'
  ``PretrainedTrainer``.)
- ``valley``:   the decoder only at ``lr * (1 - e / W)`` for ``e < W``; a fresh
  optimizer over the whole network at ``lr * (e - W + 1) / W`` for
  ``W <= e < 2W``; then ``poly(e - 2W, E - 2W)``, optimizer kept. (The paper's
  text, in the style of Sawtooth: the authors published no Valley trainer.)
- ``sawtooth``: the decoder only at ``lr * (e + 1) / H`` for ``e < H``, then, with
  the same optimizer, ``lr * (1 - (e - H) / (W - H)) ** 0.9`` for ``H <= e < W``;
  a fresh optimizer over the whole network at ``lr * (e - W + 1) / W`` for
  ``W <= e < 2W``; then ``poly(e - 2W, E - 2W)``, optimizer kept.

Sawtooth follows the authors' code (``PretrainedTrainer_sawtooth`` in their
nnU-Net fork, with ``Lin_incr_LRScheduler`` and ``PolyLRScheduler_offset``),
which produced the paper's numbers, not a reading of the paper's words: its
decoder stage rises over ``W // 2`` epochs and decays over the rest, so at
E = 150 (W = 15) epochs 7, 14 and 29 have lr 1.0e-3, 1.54e-4 and 1.0e-3.
Which parameters a decoder-only stage trains is the trainer's business
(`finetune.trainers`): the paper's frozen encoder by default, the code's
parameter set with ``--reference-param-groups``.

Stage length (`stage_length`): the paper uses W = 15 in 150-epoch runs and
W = 50 in 1000-epoch runs. In general ``W = max(1, round(E / 10))`` for
``E <= 150`` (so 150 -> 15 and a 10-epoch test run has W = 1),
``W = round(15 + 35 * (E - 150) / 850)`` for ``150 < E < 1000`` (linear between
the paper's two points) and ``W = 50`` for ``E >= 1000``; rounding is half up.
``--stage-len`` overrides it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from openmind_curate.errors import InputError

SCHEDULES = ("default", "frozen", "warmup", "valley", "sawtooth")
POLY_EXPONENT = 0.9


@dataclass(frozen=True)
class Stage:
    """One stage of a schedule: epochs ``start`` to the next stage's start."""

    name: str
    start: int
    decoder_only: bool
    fresh_optimizer: bool  # a new optimizer at `start`; else the previous stage's is kept


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def stage_length(total_epochs: int) -> int:
    """The paper's stage length W for a run of `total_epochs` (see the module doc)."""
    e = int(total_epochs)
    if e < 1:
        raise InputError(f"total epochs must be at least 1, not {total_epochs}")
    if e <= 150:
        return max(1, _round_half_up(e / 10))
    if e < 1000:
        return _round_half_up(15 + 35 * (e - 150) / 850)
    return 50


def poly(x: float, n: float, lr: float) -> float:
    """nnU-Net's PolyLR: ``lr * (1 - x / n) ** 0.9``."""
    return lr * (1.0 - x / n) ** POLY_EXPONENT


def check(schedule: str, total_epochs: int, stage_len: int) -> None:
    """Raise InputError when the schedule is unknown or its stages do not fit."""
    if schedule not in SCHEDULES:
        raise InputError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    if total_epochs < 1:
        raise InputError(f"epochs must be at least 1, not {total_epochs}")
    if stage_len < 1:
        raise InputError(f"stage length must be at least 1, not {stage_len}")
    needed = {"warmup": 1, "valley": 2, "sawtooth": 2}.get(schedule, 0)
    if needed * stage_len > total_epochs:
        raise InputError(
            f"schedule {schedule!r} needs {needed} stage(s) of {stage_len} epochs, "
            f"more than the {total_epochs} epochs of the run; lower --stage-len"
        )


def stages(schedule: str, total_epochs: int, stage_len: int) -> list[Stage]:
    """The stages of a run, in order; empty stages (a run that ends early) are left out."""
    check(schedule, total_epochs, stage_len)
    w, h = stage_len, stage_len // 2
    plan = {
        "default": [Stage("train", 0, False, True)],
        "frozen": [Stage("train_decoder", 0, True, True)],
        "warmup": [Stage("warmup_all", 0, False, True), Stage("train", w, False, False)],
        "valley": [
            Stage("cooldown_decoder", 0, True, True),
            Stage("warmup_all", w, False, True),
            Stage("train", 2 * w, False, False),
        ],
        "sawtooth": [
            Stage("warmup_decoder", 0, True, True),
            Stage("train_decoder", h, True, h == 0),
            Stage("warmup_all", w, False, True),
            Stage("train", 2 * w, False, False),
        ],
    }[schedule]
    ends = [s.start for s in plan[1:]] + [total_epochs]
    return [s for s, end in zip(plan, ends, strict=True) if end > s.start]


def stage_at(schedule: str, epoch: int, total_epochs: int, stage_len: int) -> Stage:
    """The stage epoch `epoch` (from 0) belongs to."""
    if not 0 <= epoch < total_epochs:
        raise InputError(f"epoch {epoch} outside a {total_epochs}-epoch run")
    return [s for s in stages(schedule, total_epochs, stage_len) if s.start <= epoch][-1]


def lr_at(schedule: str, epoch: int, total_epochs: int, stage_len: int, lr: float) -> float:
    """The learning rate of epoch `epoch` (from 0) of a `total_epochs` run."""
    stage = stage_at(schedule, epoch, total_epochs, stage_len)
    e, n, w, h = int(epoch), int(total_epochs), int(stage_len), int(stage_len) // 2
    if stage.name in ("train", "train_decoder") and schedule in ("default", "frozen"):
        return poly(e, n, lr)
    if stage.name == "train":  # after one (warmup) or two (valley, sawtooth) stages
        offset = w if schedule == "warmup" else 2 * w
        return poly(e - offset, n - offset, lr)
    if stage.name == "warmup_all":
        start = 0 if schedule == "warmup" else w
        return lr * (e - start + 1) / w
    if stage.name == "cooldown_decoder":
        return lr * (1 - e / w)
    if stage.name == "warmup_decoder":
        return lr * (e + 1) / h
    return poly(e - h, w - h, lr)  # sawtooth's train_decoder


def plan(schedule: str, total_epochs: int, stage_len: int, lr: float) -> list[tuple[float, bool]]:
    """(learning rate, decoder only) of every epoch."""
    return [
        (
            lr_at(schedule, e, total_epochs, stage_len, lr),
            stage_at(schedule, e, total_epochs, stage_len).decoder_only,
        )
        for e in range(total_epochs)
    ]
