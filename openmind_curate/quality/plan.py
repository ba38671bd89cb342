"""The rating plan: which units each rater scores, in which order.

Paper, appendix B.1: two raters score two images of each modality in each
dataset. A *unit* is what a rater sees and scores at once: one image, or for
a DWI series its derived FA, MD and T2w (mean b0) maps together, stored under
the source DWI's image_id (the IQS stage hands that score to the three maps).

Pure functions over the index frame; `curate ratings plan` stores the result
through `quality.ratings`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from openmind_curate.ids import stable_int
from openmind_curate.preflight import InputError
from openmind_curate.schema import DWI_DERIVED_GROUP

#: The group of every unit made of DWI-derived maps (never the acquired T2w group).
DWI_GROUP = DWI_DERIVED_GROUP
#: Order in which a DWI unit's maps are shown.
MAP_ORDER = ("FA", "MD", "T2w")
#: Parts a person does not judge image quality on; picked only if a group has nothing else.
_SECONDARY_FLAGS = ("phase", "imag", "real", "inversion")


@dataclass(frozen=True)
class PlanConfig:
    per_group: int = 2  # units per dataset x modality group
    raters: int = 2  # raters per unit
    seed: int = 0
    repeat_fraction: float = 0.0  # hidden repeats, as a fraction of each rater's regular items

    def name(self) -> str:
        return (
            f"per_group={self.per_group},raters={self.raters},seed={self.seed},"
            f"repeat={self.repeat_fraction:g}"
        )


def unit_of(index: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """The DWI-unit rule, per index row: (unit_id, is_dwi_unit).

    A map derived from a DWI (``derived_from`` set) belongs to its source's
    unit, which is stored under the source's image_id; the source belongs to
    that unit too. Both are in the dataset's DWI-derived group. Every other
    image is a unit of its own. The plan (`units`) and the IQS
    (`iqs.units_of`) both go through this function.
    """
    derived = index["derived_from"].notna()
    sources = set(index.loc[derived, "derived_from"])
    is_dwi = derived | index["image_id"].isin(sources)
    unit = index["derived_from"].where(derived, index["image_id"])
    return unit, is_dwi


def units(index: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(units, not_rated) from an index frame.

    units: one row per unit: image_id, dataset_id, group_name, secondary
    (a phase, imaginary or inversion part). A DWI unit (`unit_of`) can be
    rated when at least one of its maps has a readable header. not_rated:
    image_id, dataset_id, path, reason, for images that cannot be a unit
    (header not ok, a DWI series without maps).
    """
    ok = index["header_status"] == "ok"
    derived = index["derived_from"].notna()
    unit, is_dwi = unit_of(index)
    shown = set(unit[derived & ok])  # DWI units with a map to show
    dwi_series = ~derived & (is_dwi | (index["modality"] == "DWI"))
    skipped = [
        _reasons(index[~ok], "header_status is " + index.loc[~ok, "header_status"].astype(str)),
        _reasons(
            index[ok & dwi_series & ~index["image_id"].isin(shown)],
            "DWI series without derived maps (run `curate dwi`)",
        ),
    ]
    plain = index[ok & ~is_dwi & ~dwi_series]  # neither a DWI unit nor a DWI series
    flags = plain["flags"].fillna("")
    regular = pd.DataFrame(
        {
            "image_id": plain["image_id"],
            "dataset_id": plain["dataset_id"],
            "group_name": plain["modality"],
            "secondary": flags.apply(lambda f: any(x in f.split(",") for x in _SECONDARY_FLAGS)),
        }
    )
    maps = index[ok & derived].drop_duplicates("derived_from")
    dwi = pd.DataFrame(
        {
            "image_id": maps["derived_from"],
            "dataset_id": maps["dataset_id"],
            "group_name": DWI_GROUP,
            "secondary": False,
        }
    )
    out = pd.concat([regular, dwi], ignore_index=True)
    return out.sort_values("image_id", kind="stable").reset_index(drop=True), pd.concat(
        skipped, ignore_index=True
    )


def _reasons(rows: pd.DataFrame, reason: str | pd.Series) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "image_id": rows["image_id"],
            "dataset_id": rows["dataset_id"],
            "path": rows["path"],
            "reason": reason,
        }
    )


def unit_images(index: pd.DataFrame, unit_id: str) -> pd.DataFrame:
    """The index rows a unit shows: the image itself, or a DWI's maps in MAP_ORDER."""
    maps = index[index["derived_from"] == unit_id]
    if len(maps):
        order = {m: i for i, m in enumerate(MAP_ORDER)}
        return maps.sort_values("modality", key=lambda s: s.map(order)).reset_index(drop=True)
    return index[index["image_id"] == unit_id].reset_index(drop=True)


def unit_checksum(parts: Iterable[bytes]) -> str:
    """The checksum stored with a rating (RATINGS.image_checksum): the sha256 of
    the unit's files' bytes, in `unit_images` order. The app hashes the bytes it
    read to show them; `curate iqs --check-files` re-reads the files."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    return digest.hexdigest()


def pick_units(candidates: pd.DataFrame, config: PlanConfig) -> pd.DataFrame:
    """`per_group` units per dataset x group, seeded per group (so adding a
    dataset does not change another dataset's picks); secondary parts only
    when a group has too few primary images."""
    picked = []
    for (dataset, group), rows in candidates.groupby(["dataset_id", "group_name"], sort=True):
        rng = np.random.default_rng(stable_int(config.seed, dataset, group))
        order = rows.assign(_r=rng.random(len(rows))).sort_values(["secondary", "_r"])
        picked.append(order.head(config.per_group).drop(columns="_r"))
    if not picked:
        return candidates.iloc[0:0]
    return pd.concat(picked, ignore_index=True)


def assign(
    picked: pd.DataFrame, raters: list[str], config: PlanConfig, gold: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Give each unit to `config.raters` raters, balancing their loads, then
    order each rater's queue randomly, add hidden repeats (placed after the
    original) and gold items (for every rater). Columns: rater_id, image_id,
    kind, position, dataset_id, group_name."""
    if config.raters > len(raters):
        raise InputError(
            f"the plan needs {config.raters} raters per image but only "
            f"{len(raters)} active rater(s) exist: add more with "
            "`curate raters add NAME`"
        )
    rng = np.random.default_rng(stable_int(config.seed, "assign"))
    load = dict.fromkeys(sorted(raters), 0)
    rows = []
    for unit in picked.sample(frac=1, random_state=rng).itertuples():
        ties = rng.random(len(load))
        chosen = sorted(load, key=lambda r: (load[r], ties[list(load).index(r)]))[: config.raters]
        for rater in chosen:
            load[rater] += 1
            rows.append(_item(rater, unit, "regular"))
    plan = pd.DataFrame(rows, columns=_ITEM_COLUMNS)
    queues = []
    for rater in sorted(load):
        mine = plan[plan["rater_id"] == rater].sample(frac=1, random_state=rng)
        queues.append(_with_extras(mine, rater, config, gold, rng))
    out = pd.concat(queues, ignore_index=True) if queues else plan.assign(position=[])
    return out.reset_index(drop=True)


#: A queue item before its position is set.
_ITEM_COLUMNS = ["rater_id", "image_id", "kind", "dataset_id", "group_name"]


def _item(rater: str, unit: Any, kind: str) -> dict[str, Any]:
    """Queue item of `unit` (a row with image_id, dataset_id, group_name) for `rater`."""
    return dict(
        rater_id=rater,
        image_id=unit.image_id,
        kind=kind,
        dataset_id=unit.dataset_id,
        group_name=unit.group_name,
    )


def _with_extras(
    mine: pd.DataFrame,
    rater: str,
    config: PlanConfig,
    gold: pd.DataFrame | None,
    rng: np.random.Generator,
) -> pd.DataFrame:
    items = mine.to_dict("records")
    n_repeat = int(round(config.repeat_fraction * len(items)))
    for original in rng.permutation(len(items))[:n_repeat]:
        src = mine.iloc[int(original)]
        after = items.index(next(i for i in items if i["image_id"] == src["image_id"]))
        at = int(rng.integers(after + 1, len(items) + 1))
        items.insert(at, {**src.to_dict(), "kind": "repeat"})
    if gold is not None:
        for g in gold.itertuples():
            items.insert(int(rng.integers(0, len(items) + 1)), _item(rater, g, "gold"))
    out = pd.DataFrame(items)
    out["position"] = np.arange(len(out))
    return out
