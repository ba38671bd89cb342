"""The lead's tables as people read them (quality.display): known answers on hand-made frames."""

from __future__ import annotations

import math

import pandas as pd

from openmind_curate.quality import display as D
from openmind_curate.quality.agreement import AgreementReport


def _progress() -> pd.DataFrame:
    return pd.DataFrame(
        dict(
            rater_id=["alice", "bob", "lead"],
            is_admin=[False, False, True],
            active=[True, False, True],
            done=[3, 0, 0],
            total=[8, 4, 0],
            fraction=[0.375, 0.0, math.nan],
            median_seconds=[3.4016, None, None],
            corrections=[1, 0, 0],
        )
    )


def test_progress_table_names_units_yes_no_and_dashes():
    shown = D.progress_table(_progress())
    assert list(shown.columns) == [
        "Rater",
        "Lead",
        "Active",
        "Rated",
        "Assigned",
        "Done (%)",
        "Median time per rating (s)",
        "Corrections",
    ]
    assert shown.to_dict("records") == [
        {
            "Rater": "alice",
            "Lead": "no",
            "Active": "yes",
            "Rated": 3,
            "Assigned": 8,
            "Done (%)": "37.5",
            "Median time per rating (s)": "3.4",
            "Corrections": 1,
        },
        {
            "Rater": "bob",
            "Lead": "no",
            "Active": "no",
            "Rated": 0,
            "Assigned": 4,
            "Done (%)": "0.0",
            "Median time per rating (s)": "–",
            "Corrections": 0,
        },
        {
            "Rater": "lead",
            "Lead": "yes",
            "Active": "yes",
            "Rated": 0,
            "Assigned": 0,
            "Done (%)": "–",
            "Median time per rating (s)": "–",
            "Corrections": 0,
        },
    ]
    text = shown.to_string()
    assert "None" not in text and "nan" not in text.lower() and "NaN" not in text


def test_progress_table_of_no_raters_keeps_the_columns():
    empty = D.progress_table(_progress().iloc[0:0])
    assert len(empty) == 0 and list(empty.columns)[:2] == ["Rater", "Lead"]


def _report() -> AgreementReport:
    axes = pd.DataFrame(
        dict(
            axis=["noisiness", "corrupted"],
            n_items=[6, 6],
            n_raters=[3, 3],
            krippendorff_alpha=[0.61234, math.nan],
            icc2k=[0.7456, math.nan],
            icc2k_ci_low=[0.1234, math.nan],
            icc2k_ci_high=[0.9511, math.nan],
            icc_k=[2.0, math.nan],
        )
    )
    pairs = pd.DataFrame(
        dict(rater_a=["a"], rater_b=["b"], axis=["blurriness"], n_items=[2], kappa=[-1.0])
    )
    intra = pd.DataFrame(
        dict(
            rater_id=["a", "b"],
            axis=["artifact_level", "artifact_level"],
            n_items=[2, 7],
            kappa=[-1.0, 0.4567],
            exact_agreement=[0.5, 0.857142],
        )
    )
    empty = pd.DataFrame(columns=["rater_id", "axis", "n_items", "bias"])
    gold = pd.DataFrame(columns=["rater_id", "axis", "n_items", "mean_abs_error", "accuracy"])
    return AgreementReport(axes=axes, pairs=pairs, bias=empty, intra=intra, gold=gold)


def test_agreement_tables_titles_names_rounding_and_marks():
    tables = D.agreement_tables(_report())
    assert list(tables) == [  # the empty bias and gold tables are left out
        D.AGREEMENT_TITLES["axes"],
        D.AGREEMENT_TITLES["pairs"],
        D.AGREEMENT_TITLES["intra"],
    ]
    axes = tables[D.AGREEMENT_TITLES["axes"]]
    assert list(axes.columns) == [
        "Axis",
        "Images (n)",
        "Raters (n)",
        "Krippendorff's alpha",
        "ICC(2,k)",
        "ICC 95% CI",
        "ICC k (raters/image)",
    ]
    assert axes.iloc[0].tolist() == ["Noisiness", 6, 3, "0.61", "0.75", "0.12 to 0.95", "2"]
    assert axes.iloc[1].tolist() == ["Corrupted", 6, 3, "–", "–", "–", "–"]

    pairs = tables[D.AGREEMENT_TITLES["pairs"]]
    assert pairs.iloc[0].tolist() == ["a", "b", "Blurriness", 2, "-1.00*"]  # two items: marked

    intra = tables[D.AGREEMENT_TITLES["intra"]]
    assert list(intra.columns) == ["Rater", "Axis", "Repeats (n)", "Kappa", "Same answer (0-1)"]
    assert intra.iloc[0].tolist() == ["a", "Artifact level", 2, "-1.00*", "0.50*"]
    assert intra.iloc[1].tolist() == ["b", "Artifact level", 7, "0.46", "0.86"]  # 7 items: plain
    assert intra["Repeats (n)"].dtype.kind == "i"  # counts stay numbers, never marked
    assert D.few_items_note() == "* on fewer than 5 items: read with care"


def test_agreement_tables_of_a_real_report_have_no_raw_names():
    from openmind_curate.quality.agreement import AXES, agreement

    rows = [
        {"image_id": f"i{i}", "rater_id": r, "kind": "regular", "version": 1}
        | {a: 1 + (i + k) % 5 for a in AXES}
        | {"fov_suboptimal": i % 2 == 0, "corrupted": False}
        for k, r in enumerate(["a", "b", "c"])
        for i in range(6)
    ]
    tables = D.agreement_tables(agreement(pd.DataFrame(rows)))
    for frame in tables.values():
        text = frame.to_string()
        assert "_" not in "".join(frame.columns) and "nan" not in text.lower()
        assert "None" not in text and "artifact_level" not in text
