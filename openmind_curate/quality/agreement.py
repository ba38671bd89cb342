"""Inter-rater agreement for the human image-quality ratings.

Ratings are append-only; only each rater's latest version of an (image, kind) counts.
What each kind of item feeds:

``regular``  inter-rater statistics (``axes``, ``pairs``) and per-rater ``bias``.
``repeat``   a hidden second rating of an image the rater already rated as regular:
             only intra-rater agreement (``intra``), latest regular vs latest repeat.
``gold``     images with known answers: only rater accuracy (``gold``).

The statistics come from maintained libraries (krippendorff, scikit-learn, pingouin), not
our own formulas. Undefined statistics (one rater, no variation, too few items) are NaN and
come with a line in ``warnings``; nothing here raises on degenerate input.
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass, field

import krippendorff
import numpy as np
import pandas as pd
import pingouin
from sklearn.metrics import cohen_kappa_score

AXES = ("noisiness", "blurriness", "artifact_level")  # ordinal 1..5
FLAGS = ("fov_suboptimal", "corrupted")  # binary
_SCALE = [1, 2, 3, 4, 5]
_KEYS = ["rater_id", "image_id", "kind"]
_MIN_ICC_ITEMS = 5
#: Statistics on fewer items are shown with a caveat: a kappa of -1.0 on two
#: repeat items says almost nothing about the rater.
MIN_ITEMS = 5
_COLUMNS = {
    "axes": [
        "axis",
        "n_items",
        "n_raters",
        "krippendorff_alpha",
        "icc2k",
        "icc2k_ci_low",
        "icc2k_ci_high",
        "icc_k",
    ],
    "pairs": ["rater_a", "rater_b", "axis", "n_items", "kappa"],
    "bias": ["rater_id", "axis", "n_items", "bias"],
    "intra": ["rater_id", "axis", "n_items", "kappa", "exact_agreement"],
    "gold": ["rater_id", "axis", "n_items", "mean_abs_error", "accuracy"],
}


@dataclass
class AgreementReport:
    """All agreement tables for one set of ratings; see the module docstring."""

    axes: pd.DataFrame
    pairs: pd.DataFrame
    bias: pd.DataFrame
    intra: pd.DataFrame
    gold: pd.DataFrame
    warnings: list[str] = field(default_factory=list)


def _latest(ratings: pd.DataFrame) -> pd.DataFrame:
    """Keep each (rater_id, image_id, kind)'s highest version: corrections replace, not add."""
    return ratings.sort_values("version", kind="stable").drop_duplicates(_KEYS, keep="last")


def _as_float(s: pd.Series) -> np.ndarray:
    """Nullable ints/bools (and object columns holding None) as float with NaN."""
    if s.dtype == object:
        return np.array([np.nan if pd.isna(v) else float(v) for v in s], dtype=float)
    return s.astype("Float64").to_numpy(dtype=float, na_value=np.nan)


def _long(df: pd.DataFrame, axis: str) -> pd.DataFrame:
    """image_id, rater_id, value for one axis, nulls dropped."""
    out = pd.DataFrame(
        {
            "image_id": df["image_id"].to_numpy(),
            "rater_id": df["rater_id"].to_numpy(),
            "value": _as_float(df[axis]) if axis in df else np.nan,
        }
    )
    return out.dropna(subset=["value"])


def _kappa(a: np.ndarray, b: np.ndarray, axis: str) -> float:
    """Cohen's kappa, quadratic-weighted for ordinal axes; NaN where undefined."""
    if len(a) < 2:
        return np.nan
    ordinal = axis in AXES
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        k = cohen_kappa_score(
            a.astype(int),
            b.astype(int),
            labels=_SCALE if ordinal else [0, 1],
            weights="quadratic" if ordinal else None,
        )
    return float(k) if np.isfinite(k) else np.nan


def _alpha(matrix: np.ndarray, level: str, domain: list | None) -> float:
    """Krippendorff's alpha on a raters x items matrix (NaN = not rated); NaN if undefined."""
    if matrix.size == 0 or not (np.sum(~np.isnan(matrix), axis=0) >= 2).any():
        return np.nan
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        try:
            a = krippendorff.alpha(
                reliability_data=matrix, level_of_measurement=level, value_domain=domain
            )
        except ValueError:  # e.g. a single value in the domain
            return np.nan
    return float(a) if np.isfinite(a) else np.nan


def _icc2k(long: pd.DataFrame, axis: str, warn: list[str]) -> tuple[float, float, float, int]:
    """ICC(2,k) (pingouin's ICC(A,k): two-way random, absolute agreement, mean of k raters).

    ICC needs a complete targets x raters block, but a rating plan typically has each image
    rated by K of R raters. We take k = the most common number of raters per image (ties: the
    larger), keep the images rated by exactly k raters, and relabel raters as the 1st..kth
    rater of that image (ordered by rater_id). ICC(2,k) then treats these rater *slots* as the
    random rater factor: the usual way to get a complete block from k raters per target drawn
    from a pool (strictly a one-way design, for which ICC(1,k) is the textbook model; the slot
    effect is then near zero and ICC(2,k) close to it). Fewer than 5 such images: NaN + warning.
    """
    counts = long.groupby("image_id")["rater_id"].nunique()
    counts = counts[counts >= 2]
    if counts.empty:
        return np.nan, np.nan, np.nan, 0
    freq = counts.value_counts()
    k = int(max(freq[freq == freq.max()].index))
    block = long[long["image_id"].isin(counts.index[counts == k])].sort_values("rater_id")
    if block["image_id"].nunique() < _MIN_ICC_ITEMS:
        warn.append(
            f"{axis}: ICC(2,k) needs >= {_MIN_ICC_ITEMS} images rated by k={k} raters; "
            f"got {block['image_id'].nunique()}; icc2k is NaN"
        )
        return np.nan, np.nan, np.nan, k
    block = block.assign(slot=block.groupby("image_id").cumcount())
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        icc = pingouin.intraclass_corr(
            data=block, targets="image_id", raters="slot", ratings="value", nan_policy="omit"
        ).set_index("Type")
    row = icc.loc["ICC(A,k)"] if "ICC(A,k)" in icc.index else icc.loc["ICC2k"]  # pingouin < 0.7
    ci = row["CI95"] if "CI95" in row.index else row["CI95%"]
    value = float(row["ICC"]) if np.isfinite(row["ICC"]) else np.nan
    return value, float(ci[0]), float(ci[1]), k


def _bias(wide: pd.DataFrame, axis: str) -> pd.DataFrame:
    """Rater's score minus the mean of the OTHER raters of the same image (images with >= 2)."""
    wide = wide[wide.notna().sum(axis=1) >= 2]
    n = wide.notna().sum(axis=1)
    others = (wide.sum(axis=1).to_numpy()[:, None] - wide) / (n.to_numpy()[:, None] - 1)
    diff = (wide - others).melt(var_name="rater_id", value_name="d").dropna()
    out = diff.groupby("rater_id")["d"].agg(n_items="size", bias="mean").reset_index()
    return out.assign(axis=axis)


def _regular(df: pd.DataFrame, axis: str, warn: list[str]) -> tuple[dict, list, pd.DataFrame]:
    """Alpha, ICC(2,k), pairwise kappas and bias for one axis from the regular items."""
    long = _long(df, axis)
    wide = long.pivot(index="image_id", columns="rater_id", values="value")
    n_items = int((wide.notna().sum(axis=1) >= 2).sum())
    row = {"axis": axis, "n_items": n_items, "n_raters": int(wide.shape[1])}
    if n_items == 0:
        warn.append(f"{axis}: fewer than 2 raters on any image; no agreement computed")
        return row, [], pd.DataFrame(columns=_COLUMNS["bias"])
    ordinal = axis in AXES
    matrix = wide.T.to_numpy(dtype=float)
    row["krippendorff_alpha"] = _alpha(
        matrix, "ordinal" if ordinal else "nominal", _SCALE if ordinal else [0, 1]
    )
    if np.isnan(row["krippendorff_alpha"]):
        warn.append(f"{axis}: Krippendorff's alpha undefined (no variation in the ratings)")
    if ordinal:
        keys = ("icc2k", "icc2k_ci_low", "icc2k_ci_high", "icc_k")
        row.update(zip(keys, _icc2k(long, axis, warn), strict=True))
    pairs = []
    for a, b in itertools.combinations(wide.columns, 2):
        both = wide[[a, b]].dropna()
        if len(both):
            kappa = _kappa(both[a].to_numpy(), both[b].to_numpy(), axis)
            pairs.append(
                {"rater_a": a, "rater_b": b, "axis": axis, "n_items": len(both), "kappa": kappa}
            )
    return row, pairs, _bias(wide, axis)


def _intra(regular: pd.DataFrame, repeat: pd.DataFrame, axis: str) -> list[dict]:
    """Each rater's latest regular vs latest repeat rating of the same image."""
    a, b = _long(regular, axis), _long(repeat, axis)
    both = a.merge(b, on=["rater_id", "image_id"], suffixes=("_reg", "_rep"))
    return [
        {
            "rater_id": r,
            "axis": axis,
            "n_items": len(g),
            "kappa": _kappa(g["value_reg"].to_numpy(), g["value_rep"].to_numpy(), axis),
            "exact_agreement": float((g["value_reg"] == g["value_rep"]).mean()),
        }
        for r, g in both.groupby("rater_id")
    ]


def _gold(rated: pd.DataFrame, gold: pd.DataFrame, axis: str) -> list[dict]:
    """Mean absolute error (ordinal axes) or accuracy (flags) against the known answers."""
    truth = pd.DataFrame({"image_id": gold["image_id"].to_numpy(), "truth": _as_float(gold[axis])})
    both = _long(rated, axis).merge(truth.dropna(), on="image_id")
    err = (both["value"] - both["truth"]).abs()
    out = []
    for r, e in err.groupby(both["rater_id"]):
        mae, acc = (float(e.mean()), np.nan) if axis in AXES else (np.nan, float((e == 0).mean()))
        out.append(
            {"rater_id": r, "axis": axis, "n_items": len(e), "mean_abs_error": mae, "accuracy": acc}
        )
    return out


def _table(rows: list[dict] | list[pd.DataFrame], name: str) -> pd.DataFrame:
    frames = [r for r in rows if isinstance(r, pd.DataFrame) and len(r)]
    df = pd.concat(frames) if frames else pd.DataFrame([r for r in rows if isinstance(r, dict)])
    return df.reindex(columns=_COLUMNS[name]).reset_index(drop=True)


def few_items(table: pd.DataFrame, min_items: int = MIN_ITEMS) -> pd.Series:
    """True for the rows of an agreement table whose statistics rest on fewer
    than `min_items` items (every table has n_items)."""
    return pd.to_numeric(table["n_items"], errors="coerce").fillna(0) < min_items


def _few_items_notes(tables: dict[str, pd.DataFrame]) -> list[str]:
    notes = []
    for name, table in tables.items():
        few = int(few_items(table).sum()) if len(table) else 0
        if few:
            notes.append(
                f"{name}: {few} of {len(table)} rows rest on fewer than {MIN_ITEMS} "
                "items; read those statistics with care"
            )
    return notes


def agreement(ratings: pd.DataFrame, gold: pd.DataFrame | None = None) -> AgreementReport:
    """Agreement tables for the latest ratings: inter-rater (regular items), intra-rater
    (repeat vs regular) and accuracy against ``gold`` (image_id + the five axis columns).

    ``axes``: per axis, n_items (images with >= 2 ratings), n_raters, Krippendorff's alpha
    (ordinal on 1..5 for AXES, nominal on 0/1 for FLAGS), ICC(2,k) with its 95% CI and the k
    it used (ordinal axes only; see ``_icc2k``). ``pairs``: Cohen's kappa per rater pair
    (quadratic weights for AXES). ``bias``: rater minus the other raters' mean, averaged.
    """
    warn: list[str] = []
    if len(ratings) == 0:
        warn.append("no ratings; nothing computed")
        empty = {k: pd.DataFrame(columns=c) for k, c in _COLUMNS.items()}
        return AgreementReport(**empty, warnings=warn)
    missing = {"image_id", "rater_id", "kind", "version"} - set(ratings.columns)
    if missing:
        raise ValueError(f"ratings lack columns {sorted(missing)}")
    df = _latest(ratings)
    by_kind = {k: df[df["kind"] == k] for k in ("regular", "repeat", "gold")}
    if gold is None and len(by_kind["gold"]):
        warn.append("gold-kind ratings present but no gold table given; gold skipped")
    axes, pairs, bias, intra, golds = [], [], [], [], []
    for axis in AXES + FLAGS:
        row, p, b = _regular(by_kind["regular"], axis, warn)
        axes.append(row)
        pairs += p
        bias.append(b)
        intra += _intra(by_kind["regular"], by_kind["repeat"], axis)
        if gold is not None and axis in gold:
            golds += _gold(by_kind["gold"], gold, axis)
    tables = {
        "axes": _table(axes, "axes"),
        "pairs": _table(pairs, "pairs"),
        "bias": _table(bias, "bias"),
        "intra": _table(intra, "intra"),
        "gold": _table(golds, "gold"),
    }
    return AgreementReport(**tables, warnings=warn + _few_items_notes(tables))
