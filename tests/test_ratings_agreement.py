"""`curate ratings agreement` marks statistics computed on fewer than 5 items."""

from __future__ import annotations

import pandas as pd

from openmind_curate.cli.ratings import _marked
from openmind_curate.quality.agreement import AXES, FLAGS, MIN_ITEMS, agreement, few_items


def _ratings(scores: dict[str, list[int]], kind: str = "regular") -> pd.DataFrame:
    rows = [
        {"image_id": f"img{i}", "rater_id": r, "kind": kind, "version": 1}
        | {a: v for a in AXES}
        | {"fov_suboptimal": v >= 3, "corrupted": False}
        for r, values in scores.items()
        for i, v in enumerate(values)
    ]
    return pd.DataFrame(rows).astype({a: "Int64" for a in AXES} | {f: "boolean" for f in FLAGS})


def test_two_repeat_items_are_flagged_and_six_items_are_not():
    regular = _ratings({"a": [1, 1, 2, 2, 3, 3], "b": [1, 2, 2, 3, 3, 3]})
    repeat = _ratings({"a": [5, 1]}, kind="repeat")  # kappa on two items: -1 or so, meaningless
    report = agreement(pd.concat([regular, repeat], ignore_index=True))
    assert MIN_ITEMS == 5
    assert not few_items(report.pairs).any()  # six images
    assert few_items(report.intra).all()  # two repeats
    assert any(w.startswith("intra: ") and "fewer than 5 items" in w for w in report.warnings)
    assert not any(w.startswith("pairs: ") for w in report.warnings)

    shown = _marked(report.intra)
    agreed = shown.loc[shown["axis"] == "blurriness", "exact_agreement"].iloc[0]
    assert agreed == "0.500*"  # one of two repeats agrees: the number, with its caveat
    assert (shown["n_items"] == 2).all()  # counts are never marked
    plain = _marked(report.pairs)
    assert not plain.astype(str).apply(lambda c: c.str.endswith("*")).any().any()
