"""`curate ratings agreement` marks statistics computed on fewer than 5 items
and fits 80 columns."""

from __future__ import annotations

import pandas as pd
import pytest
from typer.testing import CliRunner

from openmind_curate.cli import app
from openmind_curate.cli.ratings import INTERPRET_POINTER
from openmind_curate.quality import display, rating_stage
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

    tables = display.agreement_tables(report)
    shown = tables[display.AGREEMENT_TITLES["intra"]]
    agreed = shown.loc[shown["Axis"] == "Blurriness", "Same answer (0-1)"].iloc[0]
    assert agreed == "0.50*"  # one of two repeats agrees: the number, with its caveat
    assert (shown["Repeats (n)"] == 2).all()  # counts are never marked
    plain = tables[display.AGREEMENT_TITLES["pairs"]]
    assert not plain.astype(str).apply(lambda c: c.str.endswith("*")).any().any()


def _report_of_four_raters():
    """Four raters with long-ish names, six images, two hidden repeats each."""
    names = ["alexandra", "bartholomew", "christopher", "dominique-marie"]
    scores = {n: [1 + (i * (k + 1)) % 5 for i in range(6)] for k, n in enumerate(names)}
    repeats = _ratings({n: [5, 1] for n in names}, kind="repeat")
    return agreement(pd.concat([_ratings(scores), repeats], ignore_index=True))


@pytest.mark.parametrize("columns", ["80", "200"])
def test_agreement_output_fits_80_columns_and_keeps_the_caveat(monkeypatch, columns):
    report = _report_of_four_raters()
    assert few_items(report.intra).all() and len(report.pairs) == 6 * 5  # 6 pairs x 5 axes
    monkeypatch.setattr(rating_stage, "agreement", lambda index, db=None, out=None: report)
    result = CliRunner().invoke(app, ["ratings", "agreement"], env={"COLUMNS": columns})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    too_wide = [line for line in lines if len(line) > 80]
    assert not too_wide, "\n".join(too_wide)
    text = result.output
    # every readable column name printed whole, on one line: no header broken mid-word
    for table in display.agreement_tables(report).values():
        for name in table.columns:
            assert name in text, name
    assert display.few_items_note() in text  # the '*' caveat under the intra table
    assert "-1.00*" in text  # dominique-marie's two repeats: kappa -1, marked
    assert lines[-2:] == INTERPRET_POINTER.splitlines()
    assert "How to interpret" in lines[-1] and "docs/guide/ratings.md" in lines[-1]
