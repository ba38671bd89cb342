"""The lead's tables as people read them: column names that say what a number
is and in which unit, rounded numbers, "yes"/"no", and "–" for a missing value.

Pure functions over the frames of `rating_flow.all_progress` and of
`agreement.agreement`; the rater app's admin page and `curate ratings
agreement` show what they return. A formatted number is a string (so that a
column holding "–" stays one type for Arrow and Streamlit); counts stay
integers. The raw frames (and the CSV files of `--out`) keep the plain numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import pandas as pd

#: What a missing value (None, NaN, NA) is shown as.
MISSING = "–"
#: Appended to a statistic computed on fewer than `agreement.MIN_ITEMS` items.
FEW_ITEMS_MARK = "*"

#: all_progress column -> readable name.
PROGRESS_COLUMNS = {
    "rater_id": "Rater",
    "is_admin": "Lead",
    "active": "Active",
    "done": "Rated",
    "total": "Assigned",
    "fraction": "Done (%)",
    "median_seconds": "Median time per rating (s)",
    "corrections": "Corrections",
}
#: The rating axes and flags as the tables name them.
AXIS_NAMES = {
    "noisiness": "Noisiness",
    "blurriness": "Blurriness",
    "artifact_level": "Artifact level",
    "fov_suboptimal": "FOV suboptimal",
    "corrupted": "Corrupted",
}
#: Agreement table (an AgreementReport field) -> its title.
AGREEMENT_TITLES = {
    "axes": "Agreement per axis (Krippendorff's alpha, ICC(2,k) with 95% CI)",
    "pairs": "Cohen's kappa per rater pair (quadratic weights on the 1-5 axes)",
    "bias": "Per-rater bias (score minus the other raters' mean)",
    "intra": "Intra-rater agreement on hidden repeats",
    "gold": "Accuracy on gold items",
}
#: Agreement table -> {column: readable name}, in the order shown. The axes
#: table's icc2k_ci_low and icc2k_ci_high become one "ICC 95% CI" column.
AGREEMENT_COLUMNS = {
    "axes": {
        "axis": "Axis",
        "n_items": "Images (n)",
        "n_raters": "Raters (n)",
        "krippendorff_alpha": "Krippendorff's alpha",
        "icc2k": "ICC(2,k)",
        "icc_ci": "ICC 95% CI",
        "icc_k": "ICC k (raters/image)",
    },
    "pairs": {
        "rater_a": "Rater A",
        "rater_b": "Rater B",
        "axis": "Axis",
        "n_items": "Images (n)",
        "kappa": "Kappa",
    },
    "bias": {
        "rater_id": "Rater",
        "axis": "Axis",
        "n_items": "Images (n)",
        "bias": "Bias (points)",
    },
    "intra": {
        "rater_id": "Rater",
        "axis": "Axis",
        "n_items": "Repeats (n)",
        "kappa": "Kappa",
        "exact_agreement": "Same answer (0-1)",
    },
    "gold": {
        "rater_id": "Rater",
        "axis": "Axis",
        "n_items": "Gold items (n)",
        "mean_abs_error": "Mean abs. error (points)",
        "accuracy": "Accuracy (0-1)",
    },
}
#: Columns that identify a row (never marked, shown first).
KEY_COLUMNS = ("Rater", "Rater A", "Rater B", "Axis")
_COUNTS = ("n_items", "n_raters", "icc_k")
_DECIMALS = 2


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _cells(values: pd.Series, fmt: Callable[[Any], str]) -> list[str]:
    return [MISSING if _missing(v) else fmt(v) for v in values]


def _number(decimals: int = _DECIMALS) -> Callable[[Any], str]:
    return lambda v: f"{float(v):.{decimals}f}"


def _yes_no(value: Any) -> str:
    return "yes" if bool(value) else "no"


def progress_table(df: pd.DataFrame) -> pd.DataFrame:
    """The admin page's progress table: readable names (`PROGRESS_COLUMNS`),
    Lead and Active as yes/no, Done (%) 0-100 and the median seconds with one
    decimal, "–" where there is nothing (no assignments, no ratings yet)."""
    out = pd.DataFrame(index=df.index)
    for col, name in PROGRESS_COLUMNS.items():
        values = df[col] if col in df else pd.Series([None] * len(df), index=df.index)
        if col in ("is_admin", "active"):
            out[name] = _cells(values, _yes_no)
        elif col == "fraction":
            out[name] = _cells(values, lambda v: f"{100 * float(v):.1f}")
        elif col == "median_seconds":
            out[name] = _cells(values, _number(1))
        elif col in ("done", "total", "corrections") and values.notna().all():
            out[name] = values.astype(int)
        else:
            out[name] = _cells(values, str)
    return out.reset_index(drop=True)


def agreement_tables(report: Any) -> dict[str, pd.DataFrame]:
    """{title: readable frame} for each non-empty table of an
    `agreement.AgreementReport` (axes, pairs, bias, intra, gold, in that
    order). Statistics have two decimals; one resting on fewer than
    `agreement.MIN_ITEMS` items ends in FEW_ITEMS_MARK (see `few_items_note`);
    counts are integers and never marked."""
    from openmind_curate.quality.agreement import few_items

    out = {}
    for name, title in AGREEMENT_TITLES.items():
        table = getattr(report, name)
        if len(table):
            out[title] = _readable(table, AGREEMENT_COLUMNS[name], few_items(table))
    return out


def few_items_note() -> str:
    """The line shown under a table with marked statistics."""
    from openmind_curate.quality.agreement import MIN_ITEMS

    return f"{FEW_ITEMS_MARK} on fewer than {MIN_ITEMS} items: read with care"


def _readable(table: pd.DataFrame, names: Mapping[str, str], few: pd.Series) -> pd.DataFrame:
    table = table.reset_index(drop=True)
    few = few.reset_index(drop=True)
    marks = [FEW_ITEMS_MARK if f else "" for f in few]
    if "icc2k_ci_low" in table:
        low, high = table["icc2k_ci_low"], table["icc2k_ci_high"]
        table = table.assign(
            icc_ci=[
                None if _missing(a) or _missing(b) else f"{a:.{_DECIMALS}f} to {b:.{_DECIMALS}f}"
                for a, b in zip(low, high, strict=True)
            ]
        )
    out = pd.DataFrame(index=table.index)
    for col, name in names.items():
        values = table[col]
        if col == "axis":
            out[name] = [AXIS_NAMES.get(v, v) for v in values]
        elif col in _COUNTS:
            out[name] = _counts(values)
        elif col in ("rater_id", "rater_a", "rater_b"):
            out[name] = _cells(values, str)
        else:
            fmt = str if col == "icc_ci" else _number()
            out[name] = [
                c if c == MISSING else c + m
                for c, m in zip(_cells(values, fmt), marks, strict=True)
            ]
    return out


def _counts(values: pd.Series) -> pd.Series | list[str]:
    """Integers, or strings with "–" when a count is missing (icc_k on a flag)."""
    if values.notna().all():
        return values.astype(int)
    return _cells(values, lambda v: str(int(v)))
