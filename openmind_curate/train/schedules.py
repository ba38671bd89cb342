"""The five fine-tuning schedules of the paper (appendix C.1, Fig. 6), as closed forms.

``E`` = total epochs, ``W`` = stage length, ``e`` = epoch counted from 0,
``lr`` = the peak learning rate and ``poly(x, n) = lr * (1 - x / n) ** 0.9``
(nnU-Net's PolyLR):

- ``default``:  ``poly(e, E)``, the whole network.
- ``frozen``:   ``poly(e, E)``, the decoder only, every epoch.
- ``warmup``:   ``lr * (e + 1) / W`` for ``e < W``, then ``poly(e - W, E - W)``;
  the whole network.
- ``valley``:   the decoder only at ``lr * (1 - e / W)`` for ``e < W``; the whole
  network at ``lr * (e - W + 1) / W`` for ``W <= e < 2W``; then
  ``poly(e - 2W, E - 2W)``.
- ``sawtooth``: the decoder only at ``lr * (e + 1) / W`` for ``e < W``; the whole
  network at ``lr * (e - W + 1) / W`` for ``W <= e < 2W``; then
  ``poly(e - 2W, E - 2W)``.

Stage length (`stage_length`): the paper uses W = 15 in 150-epoch runs and
W = 50 in 1000-epoch runs. In general ``W = max(1, round(E / 10))`` for
``E <= 150`` (so 150 -> 15 and a 10-epoch test run has W = 1),
``W = round(15 + 35 * (E - 150) / 850)`` for ``150 < E < 1000`` (linear between
the paper's two points) and ``W = 50`` for ``E >= 1000``; rounding is half up.
``--stage-len`` overrides it.
"""

from __future__ import annotations

import math

from openmind_curate.errors import InputError

SCHEDULES = ("default", "frozen", "warmup", "valley", "sawtooth")
POLY_EXPONENT = 0.9


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


def _check(schedule: str) -> None:
    if schedule not in SCHEDULES:
        raise InputError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")


def check(schedule: str, total_epochs: int, stage_len: int) -> None:
    """Raise InputError when the schedule's stages do not fit in the run."""
    _check(schedule)
    if total_epochs < 1:
        raise InputError(f"epochs must be at least 1, not {total_epochs}")
    if stage_len < 1:
        raise InputError(f"stage length must be at least 1, not {stage_len}")
    stages = {"warmup": 1, "valley": 2, "sawtooth": 2}.get(schedule, 0)
    if stages * stage_len > total_epochs:
        raise InputError(
            f"schedule {schedule!r} needs {stages} stage(s) of {stage_len} epochs, "
            f"more than the {total_epochs} epochs of the run; lower --stage-len"
        )


def lr_at(schedule: str, epoch: int, total_epochs: int, stage_len: int, lr: float) -> float:
    """The learning rate of epoch `epoch` (from 0) of a `total_epochs` run."""
    check(schedule, total_epochs, stage_len)
    e, n, w = int(epoch), int(total_epochs), int(stage_len)
    if not 0 <= e < n:
        raise InputError(f"epoch {epoch} outside a {total_epochs}-epoch run")
    if schedule in ("default", "frozen"):
        return poly(e, n, lr)
    if schedule == "warmup":
        return lr * (e + 1) / w if e < w else poly(e - w, n - w, lr)
    if e < w:  # valley, sawtooth: the decoder-only stage
        return lr * (1 - e / w) if schedule == "valley" else lr * (e + 1) / w
    if e < 2 * w:
        return lr * (e - w + 1) / w
    return poly(e - 2 * w, n - 2 * w, lr)


def decoder_only(schedule: str, epoch: int, stage_len: int) -> bool:
    """True when epoch `epoch` trains the decoder only (the encoder frozen)."""
    _check(schedule)
    if schedule == "frozen":
        return True
    return schedule in ("valley", "sawtooth") and int(epoch) < int(stage_len)


def plan(schedule: str, total_epochs: int, stage_len: int, lr: float) -> list[tuple[float, bool]]:
    """(learning rate, decoder only) of every epoch."""
    return [
        (lr_at(schedule, e, total_epochs, stage_len, lr), decoder_only(schedule, e, stage_len))
        for e in range(total_epochs)
    ]
