"""The five fine-tuning schedules against their closed forms (appendix C.1, Fig. 6,
and the authors' PretrainedTrainer / PretrainedTrainer_sawtooth).

Every expected value below is a literal worked out by hand from the closed
forms in `finetune.schedules`' docstring, for E = 10 epochs, W = 4 (so
H = W // 2 = 2) and lr = 1e-3, with poly(x, n) = lr * (1 - x / n) ** 0.9:
    poly(e, 10), e = 0..9: 1e-3, 9.095326e-4, 8.180521e-4, 7.254178e-4,
        6.314459e-4, 5.358867e-4, 4.383833e-4, 3.383835e-4, 2.349238e-4, 1.258925e-4
    poly(x, 6), x = 0, 1: 1e-3, 8.486661e-4;   poly(1, 2) = 0.5 ** 0.9 * lr = 5.358867e-4
The stage boundaries are epochs 0, H = 2, W = 4 and 2W = 8; each stage is
checked at its first epoch and one epoch inside it.
"""

from __future__ import annotations

import pytest

from openmind_curate.errors import InputError
from openmind_curate.finetune import schedules

E, W, LR = 10, 4, 1e-3
POLY10 = [
    1e-3,
    9.095326e-4,
    8.180521e-4,
    7.254178e-4,
    6.314459e-4,
    5.358867e-4,
    4.383833e-4,
    3.383835e-4,
    2.349238e-4,
    1.258925e-4,
]

EXPECTED = {
    # schedule: every epoch's lr
    "default": POLY10,
    "frozen": POLY10,
    # lr (e + 1) / W for e < 4: 2.5e-4 .. 1e-3; then poly(e - 4, 6)
    "warmup": [2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 8.486661e-4],
    # decoder: lr (1 - e / W) = 1e-3, 7.5e-4, 5e-4, 2.5e-4; whole net lr (e - W + 1) / W
    # = 2.5e-4 .. 1e-3; then poly(e - 8, 2)
    "valley": [1e-3, 7.5e-4, 5e-4, 2.5e-4, 2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 5.358867e-4],
    # decoder warm-up lr (e + 1) / H = 5e-4, 1e-3; decoder decay lr (1 - (e - H) / (W - H))^0.9
    # = 1e-3, 5.358867e-4; whole-net warm-up 2.5e-4 .. 1e-3; poly(e - 8, 2)
    "sawtooth": [5e-4, 1e-3, 1e-3, 5.358867e-4, 2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 5.358867e-4],
}
# (name, first epoch, decoder only, fresh optimizer) of each stage
STAGES = {
    "default": [("train", 0, False, True)],
    "frozen": [("train_decoder", 0, True, True)],
    "warmup": [("warmup_all", 0, False, True), ("train", 4, False, False)],
    "valley": [
        ("cooldown_decoder", 0, True, True),
        ("warmup_all", 4, False, True),
        ("train", 8, False, False),
    ],
    "sawtooth": [
        ("warmup_decoder", 0, True, True),
        ("train_decoder", 2, True, False),
        ("warmup_all", 4, False, True),
        ("train", 8, False, False),
    ],
}


@pytest.mark.parametrize("name", schedules.SCHEDULES)
def test_closed_forms(name):
    expected = EXPECTED[name]
    got = [schedules.lr_at(name, e, E, W, LR) for e in range(len(expected))]
    assert got == pytest.approx(expected, rel=2e-6, abs=0)


@pytest.mark.parametrize("name", schedules.SCHEDULES)
def test_stages(name):
    got = [
        (s.name, s.start, s.decoder_only, s.fresh_optimizer) for s in schedules.stages(name, E, W)
    ]
    assert got == STAGES[name]
    decoder_epochs = {e for e in range(E) if schedules.stage_at(name, e, E, W).decoder_only}
    expect = {"frozen": set(range(E)), "valley": {0, 1, 2, 3}, "sawtooth": {0, 1, 2, 3}}
    assert decoder_epochs == expect.get(name, set())


def test_sawtooth_matches_the_authors_150_epoch_run():
    """The issue's figures for PretrainedTrainer_sawtooth_150ep (W = 15, H = 7)."""
    w = schedules.stage_length(150)
    assert w == 15
    lrs = {e: schedules.lr_at("sawtooth", e, 150, w, 1e-3) for e in (0, 6, 7, 14, 15, 29, 30)}
    assert lrs[0] == pytest.approx(1e-3 / 7) and lrs[6] == pytest.approx(1e-3)
    assert lrs[7] == pytest.approx(1e-3)
    assert lrs[14] == pytest.approx(1.538931e-4, rel=1e-6)  # (1/8) ** 0.9 * lr
    assert lrs[15] == pytest.approx(1e-3 / 15) and lrs[29] == pytest.approx(1e-3)
    assert lrs[30] == pytest.approx(1e-3)


def test_stage_length_and_checks():
    assert [schedules.stage_length(e) for e in (1, 10, 150, 575, 1000, 2000)] == [
        1,
        1,
        15,
        33,
        50,
        50,
    ]
    with pytest.raises(InputError, match="lower --stage-len"):
        schedules.check("sawtooth", 3, 2)
    with pytest.raises(InputError, match="zigzag"):
        schedules.check("zigzag", 10, 1)
    # W = 1: sawtooth's decoder warm-up is empty; the decoder decay starts fresh
    first = schedules.stages("sawtooth", 4, 1)[0]
    assert (first.name, first.fresh_optimizer) == ("train_decoder", True)
    assert schedules.lr_at("sawtooth", 0, 4, 1, 1e-3) == pytest.approx(1e-3)
