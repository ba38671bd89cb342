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


#: A hidden repeat comes at least this many queue positions after its original,
#: so that the rater does not recognise it.
MIN_REPEAT_GAP = 10


@dataclass(frozen=True)
class PlanConfig:
    """How many units per group, raters per unit, the seed of every random
    choice, and the hidden repeats.

    Hidden repeats: `repeat_fraction` of each rater's regular items come back
    once more, as `kind="repeat"`, at least MIN_REPEAT_GAP positions after
    their original in that rater's queue (gold items included in the count).
    Originals with that much room after them are drawn first; when the queue
    is too short, a repeat goes at the end of the queue, after every other
    item. The same seed gives the same queues.
    """

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
    order each rater's queue randomly, add gold items (for every rater) and
    hidden repeats (MIN_REPEAT_GAP after the original, or at the end of a
    short queue: see `PlanConfig`). Columns: rater_id, image_id,
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
    """`mine` (regular items, in queue order) with gold items at random places,
    then hidden repeats placed by `_repeat_slots` (gold first, so that no later
    insertion can bring a repeat closer to its original)."""
    body = mine.to_dict("records")
    if gold is not None:
        for g in gold.itertuples():
            body.insert(int(rng.integers(0, len(body) + 1)), _item(rater, g, "gold"))
    regular = [i for i, item in enumerate(body) if item["kind"] == "regular"]
    n_repeat = int(round(config.repeat_fraction * len(regular)))
    slots = _repeat_slots(regular, len(body), n_repeat, rng)
    before: dict[int, list[dict[str, Any]]] = {}
    for original, slot in slots:
        before.setdefault(slot, []).append({**body[original], "kind": "repeat"})
    items = []
    for at in range(len(body) + 2):
        items += before.get(at, [])
        items += body[at : at + 1]
    out = pd.DataFrame(items, columns=_ITEM_COLUMNS)
    out["position"] = np.arange(len(out))
    return out


def _repeat_slots(
    regular: list[int], n_body: int, n_repeat: int, rng: np.random.Generator
) -> list[tuple[int, int]]:
    """(original, slot) for each hidden repeat: the repeat goes just before
    body item `slot` (`n_body`: after every body item). Originals with room
    for a slot at least MIN_REPEAT_GAP after them are drawn first; a repeat
    whose original has no such room goes to the tail (`n_body + 1`, after
    every other item, tail repeats in random order)."""
    roomy = [i for i in regular if i + MIN_REPEAT_GAP <= n_body]
    cramped = [i for i in regular if i + MIN_REPEAT_GAP > n_body]
    originals = list(rng.permutation(roomy)) + list(rng.permutation(cramped))
    slots = []
    for original in (int(i) for i in originals[:n_repeat]):
        if original + MIN_REPEAT_GAP <= n_body:
            slots.append((original, int(rng.integers(original + MIN_REPEAT_GAP, n_body + 1))))
        else:
            slots.append((original, n_body + 1))
    return slots
