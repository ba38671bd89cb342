"""Known-answer tests for quality.agreement (inter-/intra-rater agreement, gold accuracy)."""

import numpy as np
import pandas as pd
import pytest

from openmind_curate.quality.agreement import AXES, FLAGS, _alpha, agreement

_DTYPES = {a: "Int64" for a in AXES} | {f: "boolean" for f in FLAGS}


def _ratings(scores: dict, kind: str = "regular", version: int = 1, **fixed) -> pd.DataFrame:
    """One row per (rater, image): image i gets scores[rater][i] on every ordinal axis
    (None = not rated), fov_suboptimal = score >= 3, corrupted False; `fixed` overrides."""
    rows = []
    for rater, values in scores.items():
        for i, v in enumerate(values):
            if v is None:
                continue
            row = {"image_id": f"img{i:02d}", "rater_id": rater, "kind": kind, "version": version}
            row |= {a: v for a in AXES} | {"fov_suboptimal": v >= 3, "corrupted": False}
            row |= {"created_at": pd.Timestamp("2026-01-01")} | fixed
            rows.append(row)
    return pd.DataFrame(rows).astype(_DTYPES)


def _axis(report, axis: str = "noisiness") -> pd.Series:
    return report.axes.set_index("axis").loc[axis]


def _one(table: pd.DataFrame, **where) -> pd.Series:
    mask = np.logical_and.reduce([table[k] == v for k, v in where.items()])
    assert mask.sum() == 1, table
    return table[mask].iloc[0]


# Rater a: 1 1 2 2 3 3 ; rater b: 1 2 2 3 3 3 (six images).
A = [1, 1, 2, 2, 3, 3]
B = [1, 2, 2, 3, 3, 3]


def test_weighted_kappa_by_hand():
    # Quadratic weights w_ij = (i - j)^2 (sklearn's; the 1/(K-1)^2 scaling cancels).
    # Observed pairs (a, b): (1,1) (1,2) (2,2) (2,3) (3,3) (3,3)
    #   O (rows a = 1..3, cols b = 1..3) = [[1,1,0],[0,1,1],[0,0,2]]
    #   sum(w*O) = 1*1 (1,2) + 1*1 (2,3) = 2
    # Marginals: a = (2,2,2), b = (1,2,3), N = 6; E_ij = a_i * b_j / 6
    #   E = [[2,4,6],[2,4,6],[2,4,6]] / 6
    #   sum(w*E) = (0*2 + 1*4 + 4*6 + 1*2 + 0*4 + 1*6 + 4*2 + 1*4 + 0*6) / 6 = 48 / 6 = 8
    # kappa = 1 - 2 / 8 = 0.75
    report = agreement(_ratings({"a": A, "b": B}))
    pair = _one(report.pairs, axis="noisiness")
    assert (pair["rater_a"], pair["rater_b"], pair["n_items"]) == ("a", "b", 6)
    assert pair["kappa"] == pytest.approx(0.75)
    # bias: b - a = (0,1,0,1,0,0) -> b +2/6, a -2/6
    assert _one(report.bias, rater_id="b", axis="noisiness")["bias"] == pytest.approx(1 / 3)
    assert _one(report.bias, rater_id="a", axis="noisiness")["bias"] == pytest.approx(-1 / 3)
    row = _axis(report)
    assert (row["n_items"], row["n_raters"], row["icc_k"]) == (6, 2, 2)
    assert 0 < row["icc2k_ci_low"] < row["icc2k"] < row["icc2k_ci_high"] <= 1


# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability": 4 coders, 12 units,
# missing data (None). Published: nominal alpha = 0.743, ordinal alpha = 0.815.
KRIPP = {
    "A": [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
    "B": [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
    "C": [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
    "D": [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
}


def test_krippendorff_published_example():
    matrix = np.array([[np.nan if v is None else v for v in r] for r in KRIPP.values()], float)
    assert round(_alpha(matrix, "nominal", [1, 2, 3, 4, 5]), 3) == 0.743
    # The public ordinal route (value_domain 1..5, reliability matrix built from long rows).
    report = agreement(_ratings(KRIPP))
    assert round(_axis(report)["krippendorff_alpha"], 3) == 0.815
    assert _axis(report)["n_raters"] == 4
    assert _axis(report)["n_items"] == 11  # unit 12 has a single value: not pairable


def test_icc_perfect_agreement_is_one():
    values = [1, 2, 3, 4, 5, 3]
    report = agreement(_ratings({"a": values, "b": values}))
    row = _axis(report)
    assert row["icc2k"] == pytest.approx(1.0)
    assert row["krippendorff_alpha"] == pytest.approx(1.0)
    assert _one(report.pairs, axis="noisiness")["kappa"] == pytest.approx(1.0)
    assert (report.bias.loc[report.bias["axis"] == "noisiness", "bias"] == 0).all()


def test_icc_offset_rater_and_bias():
    a = [1, 2, 3, 4, 1, 2]
    report = agreement(_ratings({"a": a, "b": [v + 1 for v in a]}))
    # Two-way ANOVA, n = 6 images, k = 2 raters; b = a + 1 exactly, so MSE = 0.
    #   a - mean(a) = (-7, -1, 5, 11, -7, -1)/6; sum of squares = 246/36
    #   SSB = k * 246/36 = 41/3, MSB = SSB / 5 = 41/15
    #   rater means differ by 1: SSJ = n * (0.25 + 0.25) = 3, MSJ = 3
    #   ICC(2,k) = (MSB - MSE) / (MSB + (MSJ - MSE)/n) = (41/15) / (41/15 + 1/2) = 82/97
    row = _axis(report)
    assert row["icc2k"] == pytest.approx(82 / 97)
    assert row["icc2k"] < 1 and row["icc_k"] == 2
    # (no CI here: MSE = 0 makes pingouin's F infinite and the CI NaN)
    # bias = own score minus the mean of the OTHER raters: b - a = +1, a - b = -1 everywhere.
    assert _one(report.bias, rater_id="b", axis="noisiness")["bias"] == pytest.approx(1.0)
    assert _one(report.bias, rater_id="a", axis="noisiness")["bias"] == pytest.approx(-1.0)
    assert _one(report.bias, rater_id="a", axis="noisiness")["n_items"] == 6


def test_icc_incomplete_design_uses_rater_slots():
    # 3 raters, each image rated by 2 of them (rotating), perfect agreement -> ICC(2,2) = 1.
    truth = [1, 2, 3, 4, 5, 2, 3, 4, 1]
    plan = {"x": [0, 1], "y": [1, 2], "z": [0, 2]}  # image i: raters whose slot holds i % 3
    scores = {r: [t if i % 3 in s else None for i, t in enumerate(truth)] for r, s in plan.items()}
    row = _axis(agreement(_ratings(scores)))
    assert (row["icc_k"], row["n_raters"], row["n_items"]) == (2, 3, 9)
    assert row["icc2k"] == pytest.approx(1.0)
    # Fewer than 5 complete images: NaN and a warning.
    few = agreement(_ratings({"a": [1, 2, 3, 4], "b": [1, 2, 3, 5]}))
    assert np.isnan(_axis(few)["icc2k"])
    assert any("noisiness: ICC(2,k)" in w for w in few.warnings)


def test_latest_version_counts():
    # Version 1 of b disagrees on image 5 (1 instead of 3); version 2 corrects it.
    v1 = _ratings({"b": [1, 2, 2, 3, 3, 1]})
    v2 = _ratings({"b": [None] * 5 + [3]}, version=2)
    report = agreement(pd.concat([v2, _ratings({"a": A}), v1], ignore_index=True))
    assert _one(report.pairs, axis="noisiness")["kappa"] == pytest.approx(0.75)  # as above
    stale = agreement(pd.concat([_ratings({"a": A}), v1], ignore_index=True))
    assert _one(stale.pairs, axis="noisiness")["kappa"] != pytest.approx(0.75)


def test_repeat_only_feeds_intra_and_gold_only_gold():
    base = _ratings({"a": A, "b": B})
    ref = agreement(base)
    wild = _ratings({"a": [5, 5, 5, 1, 1, 1], "b": [5, 4, 5, 1, 1, 2]}, kind="repeat")
    gold_rows = _ratings({"a": [5, 1, 5], "b": [1, 1, 1]}, kind="gold")
    truth = _ratings({"truth": [4, 1, 3]}).drop(columns=["rater_id"])
    truth.loc[0, "corrupted"] = True
    report = agreement(pd.concat([base, wild, gold_rows], ignore_index=True), gold=truth)
    for name in ("axes", "pairs", "bias"):
        pd.testing.assert_frame_equal(getattr(report, name), getattr(ref, name))
    # Intra: a's repeats vs regulars are (1,5)(1,5)(2,5)(2,1)(3,1)(3,1); exact agreement 0.
    assert _one(report.intra, rater_id="a", axis="noisiness")["exact_agreement"] == 0
    # Gold: a rated (5,1,5) vs truth (4,1,3): |err| = 1,0,2 -> MAE 1; b (1,1,1): 3,0,2 -> 5/3.
    assert _one(report.gold, rater_id="a", axis="noisiness")["mean_abs_error"] == 1.0
    assert _one(report.gold, rater_id="b", axis="noisiness")["mean_abs_error"] == pytest.approx(
        5 / 3
    )
    # corrupted: both said False on all 3; truth (True, False, False) -> accuracy 2/3.
    acc = _one(report.gold, rater_id="a", axis="corrupted")
    assert acc["accuracy"] == pytest.approx(2 / 3) and np.isnan(acc["mean_abs_error"])
    assert set(report.gold["rater_id"]) == {"a", "b"} and len(report.gold) == 10


def test_intra_perfect_and_hand_computed():
    regular = _ratings({"a": A, "b": A})
    repeat = _ratings({"a": A, "b": B}, kind="repeat")
    intra = agreement(pd.concat([regular, repeat], ignore_index=True)).intra
    perfect = _one(intra, rater_id="a", axis="noisiness")
    assert (perfect["kappa"], perfect["exact_agreement"], perfect["n_items"]) == (1.0, 1.0, 6)
    # b: regular A vs repeat B is the hand-computed kappa 0.75; 4 of 6 identical.
    b = _one(intra, rater_id="b", axis="noisiness")
    assert b["kappa"] == pytest.approx(0.75) and b["exact_agreement"] == pytest.approx(4 / 6)


def test_degenerate_inputs_do_not_raise():
    empty = agreement(pd.DataFrame())
    assert empty.warnings and all(len(getattr(empty, t)) == 0 for t in ("axes", "pairs", "bias"))
    assert list(empty.pairs.columns) == ["rater_a", "rater_b", "axis", "n_items", "kappa"]

    single = agreement(_ratings({"a": A}))
    assert single.axes["krippendorff_alpha"].isna().all() and single.pairs.empty
    assert "noisiness: fewer than 2 raters on any image; no agreement computed" in single.warnings

    constant = agreement(_ratings({"a": [3] * 6, "b": [3] * 6}))
    assert np.isnan(_one(constant.pairs, axis="noisiness")["kappa"])
    assert np.isnan(_axis(constant)["krippendorff_alpha"]) and np.isnan(_axis(constant)["icc2k"])
    assert constant.warnings

    no_artifact = agreement(_ratings({"a": A, "b": B}, artifact_level=pd.NA))
    assert _axis(no_artifact, "artifact_level")["n_items"] == 0
    assert any(w.startswith("artifact_level:") for w in no_artifact.warnings)
    assert _one(no_artifact.pairs, axis="noisiness")["kappa"] == pytest.approx(0.75)
    assert not (no_artifact.pairs["axis"] == "artifact_level").any()
