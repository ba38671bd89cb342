"""The five fine-tuning schedules against their closed forms (appendix C.1, Fig. 6).

Expected values are literal numbers worked out from the formula text for
E = 10 epochs, stage length W = 2 and lr = 1e-3, with
poly(x, n) = lr * (1 - x / n) ** 0.9:
    poly(e, 10)  e = 0..9: 1e-3, 9.095326e-4, 8.180521e-4, 7.254178e-4, 6.314459e-4,
                           5.358867e-4, 4.383833e-4, 3.383835e-4, 2.349238e-4, 1.258925e-4
    poly(x, 8)   x = 0..7: 1e-3, 8.867624e-4, 7.718895e-4, 6.550765e-4, 5.358867e-4,
                           4.136453e-4, 2.871746e-4, 1.538931e-4
    poly(x, 6)   x = 0..5: 1e-3, 8.486661e-4, 6.942532e-4, 5.358867e-4, 3.720411e-4,
                           1.993719e-4
"""

from __future__ import annotations

import pytest

from openmind_curate.train import schedules

E, W, LR = 10, 2, 1e-3
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
POLY8 = [
    1e-3,
    8.867624e-4,
    7.718895e-4,
    6.550765e-4,
    5.358867e-4,
    4.136453e-4,
    2.871746e-4,
    1.538931e-4,
]
POLY6 = [1e-3, 8.486661e-4, 6.942532e-4, 5.358867e-4, 3.720411e-4, 1.993719e-4]

EXPECTED = {
    # schedule: (learning rates of epochs 0..9, decoder-only epochs)
    "default": (POLY10, set()),
    "frozen": (POLY10, set(range(10))),
    # lr*(e+1)/W for e < W: 5e-4, 1e-3; then poly(e - 2, 8)
    "warmup": ([5e-4, 1e-3, *POLY8], set()),
    # decoder only at lr*(1 - e/W): 1e-3, 5e-4; whole network lr*(e-W+1)/W: 5e-4, 1e-3;
    # then poly(e - 4, 6)
    "valley": ([1e-3, 5e-4, 5e-4, 1e-3, *POLY6], {0, 1}),
    # decoder only at lr*(e+1)/W: 5e-4, 1e-3; whole network 5e-4, 1e-3; then poly(e - 4, 6)
    "sawtooth": ([5e-4, 1e-3, 5e-4, 1e-3, *POLY6], {0, 1}),
}


@pytest.mark.parametrize("name", schedules.SCHEDULES)
def test_closed_forms(name):
    lrs, frozen = EXPECTED[name]
    assert len(lrs) == E
    got = [schedules.lr_at(name, e, E, W, LR) for e in range(E)]
    assert got == pytest.approx(lrs, rel=2e-6, abs=0)
    assert {e for e in range(E) if schedules.decoder_only(name, e, W)} == frozen
    assert schedules.plan(name, E, W, LR) == [(lr, e in frozen) for e, lr in enumerate(got)]


def test_paper_shape_150_epochs():
    # Fig. 6: 150 epochs, stages of 15, peak 1e-3
    w = schedules.stage_length(150)
    assert w == 15
    saw = [schedules.lr_at("sawtooth", e, 150, w, 1e-3) for e in range(150)]
    assert saw[0] == pytest.approx(1e-3 / 15) and saw[14] == pytest.approx(1e-3)
    assert saw[15] == pytest.approx(1e-3 / 15) and saw[29] == pytest.approx(1e-3)
    assert saw[30] == pytest.approx(1e-3) and saw[149] == pytest.approx(1e-3 * (1 / 120) ** 0.9)
    valley = [schedules.lr_at("valley", e, 150, w, 1e-3) for e in range(150)]
    assert valley[0] == 1e-3 and valley[14] == pytest.approx(1e-3 / 15)
    assert valley[15] == pytest.approx(1e-3 / 15)
    assert [schedules.decoder_only("sawtooth", e, w) for e in (0, 14, 15, 149)] == [
        True,
        True,
        False,
        False,
    ]


@pytest.mark.parametrize(
    ("epochs", "stage"),
    [
        (1, 1),
        (5, 1),
        (10, 1),
        (14, 1),
        (15, 2),
        (100, 10),
        (150, 15),
        (575, 33),
        (1000, 50),
        (3000, 50),
    ],
)
def test_stage_length_rule(epochs, stage):
    # max(1, round(E/10)) up to 150; linear 15 -> 50 between 150 and 1000; 50 beyond
    assert schedules.stage_length(epochs) == stage


def test_bad_input():
    with pytest.raises(ValueError, match="unknown schedule"):
        schedules.lr_at("zigzag", 0, 10, 2, 1e-3)
    with pytest.raises(ValueError, match="stage"):
        schedules.lr_at("valley", 0, 3, 2, 1e-3)  # two stages of 2 in 3 epochs
    with pytest.raises(ValueError, match="outside"):
        schedules.lr_at("default", 10, 10, 2, 1e-3)
    schedules.check("valley", 4, 2)  # exactly two stages, no poly epoch: allowed
