"""The report's tables: pure functions of the index DataFrame (paper Tables
6, 9 and 10, Figures 4 and 5), vectorized for a 113,921-row index."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from openmind_curate.quality.threshold import count_kept

#: IQS thresholds of the kept-images table (lower IQS is better; paper Table 6).
IQS_THRESHOLDS: tuple[float, ...] = (1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0)
#: Fractions of all images marked on the cumulative curve (paper Figure 4).
CUMULATIVE_MARKS: tuple[float, ...] = (0.5, 0.75, 0.9)
#: Rows of the top-datasets table (paper Table 9 lists 12).
TOP_DATASETS = 12
#: Metadata fields of the availability table, in the order shown.
METADATA_FIELDS: tuple[str, ...] = (
    "age",
    "sex",
    "handedness",
    "health_status",
    "race",
    "weight",
    "bmi",
)
#: The histograms and pies of the metadata figure: column, title, unit.
HISTOGRAMS: tuple[tuple[str, str, str], ...] = (
    ("age", "age", "years"),
    ("weight", "weight", "kg"),
    ("bmi", "BMI", "kg/m²"),
)
PIES: tuple[tuple[str, str], ...] = (
    ("sex", "sex"),
    ("handedness", "handedness"),
    ("health_status", "health status"),
    ("race", "race"),
)
#: Readable names of coded values.
VALUE_LABELS: dict[str, dict[str, str]] = {
    "sex": {"M": "male", "F": "female", "O": "other"},
    "handedness": {"R": "right", "L": "left", "A": "ambidextrous"},
}
#: A pie shows this many categories at most; the rest are pooled.
PIE_CATEGORIES = 6
IQS_BIN_WIDTH = 0.25
DPI = 100


def known(values: pd.Series) -> pd.Series:
    """True where a value is known: not null and, for text, not blank."""
    mask = values.notna()
    if not pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        mask &= values.where(mask, "").astype(str).str.strip().ne("")
    return mask.astype(bool)


def subject_keys(index: pd.DataFrame) -> pd.Series:
    """dataset/subject (subject labels are only unique within a dataset);
    null where the subject is unknown."""
    subject = index["subject"]
    keys = index["dataset_id"].astype(str) + "/" + subject.astype(str)
    return keys.where(known(subject))


def kept_mask(index: pd.DataFrame, manifest: pd.DataFrame | None) -> pd.Series | None:
    """Which index rows the manifest kept (by image_id); None without a manifest."""
    if manifest is None:
        return None
    return index["image_id"].isin(manifest["image_id"])


def modality_table(index: pd.DataFrame, kept: pd.Series | None = None) -> pd.DataFrame:
    """Images, datasets and subjects per modality, most images first (Table 10).

    With `kept` (a boolean Series aligned with `index`), a ``kept`` column
    counts the images the manifest kept."""
    frame = pd.DataFrame(
        {
            "modality": index["modality"].astype(str),
            "dataset_id": index["dataset_id"].astype(str),
            "subject": subject_keys(index),
        }
    )
    groups = frame.groupby("modality", sort=False)
    table = pd.DataFrame(
        {
            "images": groups.size(),
            "datasets": groups["dataset_id"].nunique(),
            "subjects": groups["subject"].nunique(),
        }
    )
    if kept is not None:
        counts = frame.loc[kept.to_numpy(bool)].groupby("modality").size()
        table["kept"] = counts.reindex(table.index, fill_value=0)
    table = table.rename_axis("modality").reset_index()
    table = table.sort_values(["images", "modality"], ascending=[False, True], kind="stable")
    table = table.reset_index(drop=True)
    for col in table.columns[1:]:
        table[col] = table[col].astype("int64")
    return table


def cumulative_curve(index: pd.DataFrame) -> pd.DataFrame:
    """Datasets sorted by image count (largest first; ties by name) with the
    running total: columns datasets (1..D), dataset_id, images, cumulative,
    fraction (of all images)."""
    sizes = index["dataset_id"].astype(str).value_counts()
    sizes = sizes.rename_axis("dataset_id").rename("images").reset_index()
    sizes = sizes.sort_values(["images", "dataset_id"], ascending=[False, True], kind="stable")
    sizes = sizes.reset_index(drop=True)
    sizes["images"] = sizes["images"].astype("int64")
    sizes.insert(0, "datasets", np.arange(1, len(sizes) + 1, dtype="int64"))
    sizes["cumulative"] = sizes["images"].cumsum().astype("int64")
    total = int(sizes["images"].sum())
    sizes["fraction"] = sizes["cumulative"] / total if total else 0.0
    return sizes


def cumulative_marks(
    curve: pd.DataFrame, marks: Sequence[float] = CUMULATIVE_MARKS
) -> dict[float, int]:
    """For each fraction f, the fewest datasets (largest first) that hold at
    least f of all images ("50% of all images originate from 12 datasets")."""
    if curve.empty:
        return {}
    cumulative = curve["cumulative"].to_numpy()
    total = int(cumulative[-1])
    out = {}
    for f in marks:
        target = int(np.ceil(f * total - 1e-9))
        out[f] = int(np.searchsorted(cumulative, target, side="left")) + 1
    return out


def availability_table(
    index: pd.DataFrame, fields: Sequence[str] = METADATA_FIELDS
) -> pd.DataFrame:
    """Per metadata field, the images with a known value and their fraction."""
    n = len(index)
    rows = []
    for field in fields:
        count = int(known(index[field]).sum()) if field in index.columns else 0
        rows.append({"field": field, "images": count, "fraction": count / n if n else 0.0})
    return pd.DataFrame(rows, columns=["field", "images", "fraction"])


def category_counts(
    values: pd.Series, labels: Mapping[str, str] | None = None, top: int = PIE_CATEGORIES
) -> pd.Series:
    """Counts of the known values, most frequent first, coded values given
    their names; beyond `top` categories the rest are pooled as one."""
    shown = values[known(values)].astype(str).str.strip()
    if labels:
        shown = shown.map(lambda v: labels.get(v, v))
    counts = shown.value_counts()
    counts = counts.sort_index(kind="stable").sort_values(ascending=False, kind="stable")
    if len(counts) > top:
        rest = counts.iloc[top - 1 :]
        counts = pd.concat(
            [counts.iloc[: top - 1], pd.Series({f"{len(rest)} others": int(rest.sum())})]
        )
    return counts.astype("int64")


def iqs_values(index: pd.DataFrame, iqs: pd.DataFrame | None = None) -> pd.Series:
    """Each image's IQS (float, NaN if unrated), aligned with `index`.

    With an IQS table, its ``iqs`` replaces the index's column, by image_id;
    an image the table lacks is unrated."""
    if iqs is None:
        values = index["iqs"]
    else:
        scores = iqs.drop_duplicates("image_id", keep="last").set_index("image_id")["iqs"]
        values = index["image_id"].map(scores)
    return pd.to_numeric(values, errors="coerce").astype("float64")


def iqs_threshold_table(
    values: pd.Series, thresholds: Sequence[float] = IQS_THRESHOLDS
) -> pd.DataFrame:
    """Images kept at each IQS threshold (`threshold.kept_at`: IQS <= t, lower
    is better; the rule `curate iqs` and `build-manifest` use), then the
    unrated images and all images: columns kept, threshold, images, fraction."""
    n = len(values)
    rated = int(values.notna().sum())
    rows = [
        {"kept": f"IQS ≤ {t:g}", "threshold": float(t), "images": k}
        for t, k in zip(thresholds, count_kept(values, thresholds), strict=True)
    ]
    rows.append({"kept": "unrated (no IQS)", "threshold": np.nan, "images": n - rated})
    rows.append({"kept": "all images", "threshold": np.nan, "images": n})
    table = pd.DataFrame(rows, columns=["kept", "threshold", "images"])
    table["fraction"] = table["images"] / n if n else 0.0
    return table


def top_datasets(
    index: pd.DataFrame, n: int = TOP_DATASETS, kept: pd.Series | None = None
) -> pd.DataFrame:
    """The `n` datasets with the most images (Table 9): dataset, images,
    subjects, modalities (most images first), and ``kept`` with a manifest."""
    frame = pd.DataFrame(
        {
            "dataset": index["dataset_id"].astype(str),
            "modality": index["modality"].astype(str),
            "subject": subject_keys(index),
        }
    )
    groups = frame.groupby("dataset", sort=False)
    table = pd.DataFrame({"images": groups.size(), "subjects": groups["subject"].nunique()})
    if kept is not None:
        counts = frame.loc[kept.to_numpy(bool)].groupby("dataset").size()
        table["kept"] = counts.reindex(table.index, fill_value=0)
    table = table.rename_axis("dataset").reset_index()
    table = table.sort_values(["images", "dataset"], ascending=[False, True], kind="stable")
    table = table.head(n).reset_index(drop=True)
    top = frame[frame["dataset"].isin(table["dataset"])]
    per = top.groupby(["dataset", "modality"]).size().rename("count").reset_index()
    per = per.sort_values(["dataset", "count", "modality"], ascending=[True, False, True])
    names = per.groupby("dataset", sort=False)["modality"].agg(", ".join)
    table.insert(3, "modalities", table["dataset"].map(names).fillna(""))
    for col in ("images", "subjects", *(["kept"] if kept is not None else [])):
        table[col] = table[col].astype("int64")
    return table


def flagged_images(
    index: pd.DataFrame,
    metrics: pd.DataFrame,
    kept: pd.Series | None = None,
    corrupt: Sequence[str] = (),
) -> pd.DataFrame:
    """The index's images whose metrics row lists a problem: image_id,
    dataset, path, problems (list), corrupt (any code of `corrupt`, what
    `build-manifest` drops) and, with `kept`, in_manifest. Broken first,
    then by dataset and path. Rows of images not in the index are left out."""
    rows = metrics.drop_duplicates("image_id", keep="last")
    codes = rows.set_index("image_id")["problems"].map(
        lambda p: [] if p is None else [str(c) for c in p]
    )
    problems = index["image_id"].map(codes)
    has = problems.map(lambda p: isinstance(p, list) and len(p) > 0).astype(bool)
    table = pd.DataFrame(
        {
            "image_id": index["image_id"].astype(str),
            "dataset": index["dataset_id"].astype(str),
            "path": index["path"].astype(str),
            "problems": problems,
        }
    )
    table["corrupt"] = problems.map(lambda p: isinstance(p, list) and bool(set(p) & set(corrupt)))
    if kept is not None:
        table["in_manifest"] = kept.to_numpy(bool)
    table = table.loc[has.to_numpy(bool)]
    table = table.sort_values(
        ["corrupt", "dataset", "path"], ascending=[False, True, True], kind="stable"
    )
    return table.reset_index(drop=True)


def problem_table(flagged: pd.DataFrame, corrupt: Sequence[str] = ()) -> pd.DataFrame:
    """Per problem code, the flagged images (`flagged_images`): problem,
    dropped ("yes" for a code of `corrupt`), images and, when `flagged` has
    in_manifest, in_manifest. Codes of `corrupt` first in their order, then
    the others by name; an image with two codes counts under each."""
    per = flagged.explode("problems").rename(columns={"problems": "problem"})
    found = sorted(set(per["problem"].dropna().astype(str)))
    order = [c for c in corrupt if c in found] + [c for c in found if c not in corrupt]
    groups = per.groupby("problem")
    table = pd.DataFrame({"problem": order})
    table["dropped"] = ["yes" if c in corrupt else "no" for c in order]
    table["images"] = table["problem"].map(groups.size()).fillna(0).astype("int64")
    if "in_manifest" in flagged.columns:
        inside = per.loc[per["in_manifest"].astype(bool)].groupby("problem").size()
        table["in_manifest"] = table["problem"].map(inside).fillna(0).astype("int64")
    return table
