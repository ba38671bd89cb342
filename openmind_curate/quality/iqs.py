"""The Image Quality Score (paper, appendix B.1), from the raters' scores.

Pure functions over the index frame and the ratings frame; `curate iqs`
reads them, calls `compute_iqs` and writes the result into the index.

1. Per unit, across raters (each rater's latest *regular* rating; repeat and
   gold items never change an IQS): the mean of each numeric axis, the worst
   of each flag (any rater says corrupted -> corrupted; same for the FOV).
2. Per unit: IQS = mean of its numeric axes (no artifact_level for a DWI
   unit); 5 if corrupted or any *aggregated* axis equals 5 (one rater's 5
   beside another's 3 is a 4, not a 5); +1 for a suboptimal FOV, capped at 5.
3. Per group: the mean over the group's rated units, given to every image of
   the group, rated or not. A group is dataset x modality, except that a DWI
   unit (the 4D source DWI and the FA, MD and mean-b0 "T2w" maps derived from
   it) belongs to dataset x DWI-derived: the maps carry modality T2w and the
   source's dataset_id, and must never be pooled with the acquired T2w images.

The 4D source DWI row gets what its maps get: the unit's score, and the
DWI-derived group's score. A DWI row without maps is not a unit (it cannot be
rated, `plan.units`): it forms a dataset x DWI group that stays unscored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from openmind_curate.quality.plan import unit_of
from openmind_curate.quality.threshold import kept_at
from openmind_curate.schema import DWI_DERIVED_GROUP

AXES = ("noisiness", "blurriness", "artifact_level")
FLAGS = ("fov_suboptimal", "corrupted")
#: Thresholds of the paper's Table 6 (images kept at IQS <= threshold).
THRESHOLDS = (1.5, 2.5, 3.0)
#: Columns of the detailed table (`schema.IQS`), in order.
COLUMNS = (
    "image_id",
    "dataset_id",
    "modality",
    "group_key",
    "n_raters",
    *AXES,
    *FLAGS,
    "iqs_image",
    "iqs",
    "group_n_rated",
)
_WORST = 5.0
_EPS = 1e-9


@dataclass
class IqsResult:
    """What `compute_iqs` found: one row per index image, the groups, and what was ignored."""

    table: pd.DataFrame  # COLUMNS, one row per index image, in index order
    groups: pd.DataFrame  # group_key, dataset_id, n_images, n_rated, iqs
    unknown_ratings: list[str] = field(default_factory=list)  # rated ids not in the index
    not_units: list[str] = field(default_factory=list)  # rated index ids that are not a unit

    @property
    def unrated_groups(self) -> list[str]:
        return sorted(self.groups.loc[self.groups["iqs"].isna(), "group_key"])

    def warnings(self, show: int = 5) -> list[str]:
        """Human-readable warnings: unscored groups and ignored ratings."""
        out = []
        if self.unrated_groups:
            out.append(
                listing(
                    f"{len(self.unrated_groups)} group(s) have no rated image, their IQS is null",
                    self.unrated_groups,
                    show,
                )
            )
        if self.unknown_ratings:
            out.append(
                listing(
                    f"ratings of {len(self.unknown_ratings)} image_id(s) not in the "
                    "index were ignored",
                    self.unknown_ratings,
                    show,
                )
            )
        if self.not_units:
            out.append(
                listing(
                    f"ratings of {len(self.not_units)} DWI-derived map(s) rated on "
                    "their own were ignored (a DWI unit is rated under the DWI's "
                    "image_id)",
                    self.not_units,
                    show,
                )
            )
        return out


def listing(head: str, items: Sequence[str], show: int) -> str:
    more = f", ... and {len(items) - show} more" if len(items) > show else ""
    return f"{head}: {', '.join(items[:show])}{more}"


def units_of(index: pd.DataFrame) -> pd.DataFrame:
    """Per index row: image_id, dataset_id, modality, unit_id, is_dwi_unit, group_key.

    A DWI-derived map's unit is its source DWI; so is the source's own
    (`plan.unit_of`, the rule the rating plan uses). Their group is
    ``<dataset_id>/DWI-derived``; every other image is its own unit in
    ``<dataset_id>/<modality>``.
    """
    unit, dwi = unit_of(index)
    group = np.where(dwi, DWI_DERIVED_GROUP, index["modality"].astype(str))
    return pd.DataFrame(
        {
            "image_id": index["image_id"].to_numpy(),
            "dataset_id": index["dataset_id"].to_numpy(),
            "modality": index["modality"].to_numpy(),
            "unit_id": unit.to_numpy(),
            "is_dwi_unit": dwi.to_numpy(),
            "group_key": index["dataset_id"].astype(str).to_numpy() + "/" + group,
        }
    )


def counted(ratings: pd.DataFrame) -> pd.DataFrame:
    """The ratings that feed the IQS: each rater's latest regular rating per unit."""
    from openmind_curate.quality.ratings import latest

    if ratings.empty:
        return ratings
    return latest(ratings, kinds=("regular",))


def aggregate(ratings: pd.DataFrame, dwi_units: set[str] | frozenset[str] = frozenset()):
    """Step i: per unit (image_id), the raters' mean of each axis and worst of each flag.

    `ratings` holds one rating per rater and unit (see `counted`). A DWI
    unit's artifact_level is dropped: the paper does not use it there.
    Returns image_id, n_raters, the axes (float, NaN if absent), the flags.
    """
    cols = ["image_id", "n_raters", *AXES, *FLAGS]
    if ratings.empty:
        return pd.DataFrame(columns=cols)
    df = ratings[["image_id", "rater_id", *AXES, *FLAGS]].copy()
    for axis in AXES:
        df[axis] = pd.to_numeric(df[axis], errors="coerce").astype(float)
    df.loc[df["image_id"].isin(dwi_units), "artifact_level"] = np.nan
    for flag in FLAGS:
        df[flag] = df[flag].fillna(False).astype(bool)
    g = df.groupby("image_id", sort=True)
    out = g[list(AXES)].mean()  # NaN-skipping: an axis some raters left empty
    out[list(FLAGS)] = g[list(FLAGS)].any()
    out.insert(0, "n_raters", g["rater_id"].nunique())
    return out.reset_index()[cols]


def image_score(agg: pd.DataFrame) -> pd.Series:
    """Step ii: the IQS of each aggregated unit (a Series aligned with `agg`).

    Mean of the present axes; 5 if corrupted or any aggregated axis equals 5;
    then +1 for a suboptimal FOV, capped at 5.
    """
    axes = agg[list(AXES)].astype(float)
    score = axes.mean(axis=1, skipna=True)
    worst = agg["corrupted"].astype(bool) | (axes >= _WORST - _EPS).any(axis=1)
    score = score.where(~worst, _WORST)
    score = score + agg["fov_suboptimal"].astype(bool).astype(float)
    return score.clip(upper=_WORST).astype(float)


def compute_iqs(index: pd.DataFrame, ratings: pd.DataFrame) -> IqsResult:
    """Steps i-iii for every image of `index` from every version of `ratings`
    (`ratings.read_ratings`). Ratings of ids not in the index, or of a DWI map
    rated on its own, are ignored and reported."""
    units = units_of(index)
    unit_ids = set(units["unit_id"])
    counted_ = counted(ratings)
    rated_ids = pd.Series(sorted(set(counted_["image_id"]))) if len(counted_) else pd.Series([])
    in_index = set(units["image_id"])
    unknown = [i for i in rated_ids if i not in in_index]
    not_units = [i for i in rated_ids if i in in_index and i not in unit_ids]
    usable = counted_[counted_["image_id"].isin(unit_ids)] if len(counted_) else counted_
    dwi_units = set(units.loc[units["is_dwi_unit"], "unit_id"])
    agg = aggregate(usable, dwi_units)
    agg["iqs_image"] = image_score(agg) if len(agg) else pd.Series(dtype=float)
    per_unit = agg.set_index("image_id")
    table = units.join(per_unit, on="unit_id")
    table["n_raters"] = table["n_raters"].fillna(0).astype(int)
    for axis in (*AXES, "iqs_image"):
        table[axis] = pd.to_numeric(table[axis], errors="coerce").astype(float)
    for flag in FLAGS:
        table[flag] = table[flag].astype("boolean")
    # step iii: one value per rated unit, so a DWI's three maps count once
    rated_units = table.dropna(subset=["iqs_image"]).drop_duplicates("unit_id")
    group_iqs = rated_units.groupby("group_key")["iqs_image"].mean()
    group_n = rated_units.groupby("group_key").size()
    table["iqs"] = table["group_key"].map(group_iqs).astype(float)
    table["group_n_rated"] = table["group_key"].map(group_n).fillna(0).astype(int)
    groups = (
        table.groupby("group_key", sort=True)
        .agg(
            dataset_id=("dataset_id", "first"),
            n_images=("image_id", "size"),
            n_rated=("group_n_rated", "first"),
            iqs=("iqs", "first"),
        )
        .reset_index()
    )
    return IqsResult(table[list(COLUMNS)].reset_index(drop=True), groups, unknown, not_units)


def kept_table(iqs: pd.Series, thresholds: Sequence[float] = THRESHOLDS) -> pd.DataFrame:
    """How many images a manifest keeps at each threshold (`threshold.kept_at`:
    IQS <= t, lower is better; the rule build-manifest and the report use)."""
    n = len(iqs)
    rows = []
    for t in thresholds:
        kept = int(kept_at(iqs, t).sum())
        rows.append(dict(threshold=t, kept=kept, fraction=round(kept / n, 4) if n else 0.0))
    return pd.DataFrame(rows, columns=["threshold", "kept", "fraction"])


def file_checksum(index: pd.DataFrame, unit_id: str) -> str | None:
    """`plan.unit_checksum` of a unit's files as they are now; None if a file
    cannot be read."""
    from openmind_curate.quality.plan import unit_checksum, unit_images

    def chunks():
        for row in unit_images(index, unit_id).itertuples():
            with open(Path(row.root) / row.path, "rb") as fh:
                yield from iter(lambda fh=fh: fh.read(1 << 20), b"")

    try:
        return unit_checksum(chunks())
    except OSError:
        return None


def changed_files(index: pd.DataFrame, ratings: pd.DataFrame) -> list[str]:
    """Units whose files no longer match the checksum stored with a counted
    rating: the rater scored a file that has since changed. Reads every
    rated unit's files once (hence opt-in, `curate iqs --check-files`)."""
    rows = counted(ratings)
    if rows.empty:
        return []
    rows = rows[rows["image_checksum"].notna() & rows["image_id"].isin(set(index["image_id"]))]
    changed = []
    for unit_id, sums in rows.groupby("image_id", sort=True)["image_checksum"]:
        now = file_checksum(index, str(unit_id))
        if now is None or any(s != now for s in sums):
            changed.append(str(unit_id))
    return changed
