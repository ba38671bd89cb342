"""The rater app's logic over the ratings store, without any UI.

Where a rater is (the first unrated item of their queue, which lives in the
database, so a restarted app resumes exactly there), what "back" shows (an
item the rater already scored, with their latest values, for a correction),
what to prefetch, progress, and the rating dict a form submission saves.
Every read is of one rater's own rows; only `all_progress` (the admin page)
reads everyone's.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine

from openmind_curate.quality import ratings as store
from openmind_curate.quality.plan import DWI_GROUP
from openmind_curate.quality.ratings import AXES, FLAGS, RatingsError

#: The rating scale, one line per level, shown once above the axes. The paper
#: (appendix B.1) defines the ends: 1 "clear and sharp imagery", 5 "highly
#: compromised image quality". Levels 2-4 are this project's anchors, in the same style.
SCALE = (
    "Clear and sharp: nothing to see",
    "Slight: visible only on close inspection; every structure clear",
    "Moderate: plainly visible; fine detail (cortical ribbon, small vessels) harder to see",
    "Strong: much of the image degraded; only coarse anatomy reliable",
    "Highly compromised: the image is unusable for this",
)
#: What to look at for each axis (one short line beside its name).
AXIS_HINTS = {
    "noisiness": "grain in tissue and in the air around the head",
    "blurriness": "sharpness of edges: grey/white boundary, sulci",
    "artifact_level": "motion, ghosting, ringing, signal voids, wrap-around, equipment",
}
AXIS_LABELS = {
    "noisiness": "Noisiness",
    "blurriness": "Blurriness",
    "artifact_level": "Artifact level",
}
FLAG_LABELS = {
    "fov_suboptimal": "Field of view suboptimal (anatomy cut off)",
    "corrupted": "Corrupted (unreadable, scrambled or empty)",
}


@dataclass(frozen=True)
class Item:
    """One item of a rater's queue, as the app shows it."""

    image_id: str  # the unit: an image, or a DWI (its maps are shown)
    kind: str  # regular, repeat, gold
    dataset_id: str
    group_name: str  # modality group, or plan.DWI_GROUP
    number: int  # 1-based place in the rater's queue order
    total: int
    latest: dict[str, Any] | None = field(default=None, compare=False)  # for a correction

    @property
    def is_dwi(self) -> bool:
        return self.group_name == DWI_GROUP

    @property
    def axes(self) -> tuple[str, ...]:
        """The axes rated: artifact level is not asked of DWI-derived maps."""
        return tuple(a for a in AXES if not (self.is_dwi and a == "artifact_level"))

    @property
    def key(self) -> tuple[str, str, int]:
        """Identifies one showing: a correction of version n is a different showing."""
        return (self.image_id, self.kind, int(self.latest["version"]) if self.latest else 0)

    def label(self, show_datasets: bool = False) -> str:
        text = f"Item {self.number} of {self.total}"
        if show_datasets:
            text += f" · {self.dataset_id}"
        return text


def _items(queue: pd.DataFrame) -> list[Item]:
    total = len(queue)
    return [
        Item(str(r.image_id), str(r.kind), str(r.dataset_id), str(r.group_name), n, total)
        for n, r in enumerate(queue.itertuples(), start=1)
    ]


def current_item(engine: Engine, rater_id: str) -> Item | None:
    """The first unrated item in queue order, or None when the rater is done."""
    return _current(store.queue(engine, rater_id))


def _current(q: pd.DataFrame) -> Item | None:
    for item, rated in zip(_items(q), q["rated_at"].isna(), strict=True):
        if rated:
            return item
    return None


def next_after(engine: Engine, rater_id: str, item: Item | None) -> Item | None:
    """The unrated item after `item` in queue order (what to prefetch), or None."""
    if item is None:
        return None
    return _next_after(store.queue(engine, rater_id), item)


def _next_after(q: pd.DataFrame, item: Item) -> Item | None:
    unrated = [i for i, r in zip(_items(q), q["rated_at"].isna(), strict=True) if r]
    keys = [(i.image_id, i.kind) for i in unrated]
    here = (item.image_id, item.kind)
    if here in keys:
        rest = unrated[keys.index(here) + 1 :]
    else:  # a correction or a skipped item: the next unrated one
        rest = unrated
    return rest[0] if rest else None


def _rated_order(mine: pd.DataFrame) -> pd.DataFrame:
    """The rater's latest rating per item, ordered by when the item was first rated
    (so correcting an item does not move it in the back history)."""
    first = mine.groupby(["image_id", "kind"])["created_at"].min().rename("first_at")
    last = store.latest(mine).join(first, on=["image_id", "kind"])
    return last.sort_values(["first_at", "image_id", "kind"], kind="stable").reset_index(drop=True)


def previous_item(engine: Engine, rater_id: str, steps: int = 1) -> Item | None:
    """An item the rater already scored, `steps` back from the most recently
    (first) rated one, with its latest values in `latest`; None if there is none."""
    if steps < 1:
        raise ValueError("steps counts back from 1")
    mine = store.read_ratings(engine, rater_id=rater_id)
    return _previous(store.queue(engine, rater_id), mine, steps) if not mine.empty else None


def _previous(q: pd.DataFrame, mine: pd.DataFrame, steps: int) -> Item | None:
    order = _rated_order(mine)
    if steps > len(order):
        return None
    row = order.iloc[len(order) - steps]
    for item in _items(q):
        if (item.image_id, item.kind) == (row["image_id"], row["kind"]):
            values = {
                c: _plain(row[c]) for c in (*AXES, *FLAGS, "comment", "version", "window_settings")
            }
            return replace(item, latest=values)
    return None  # rated, but no longer in the plan


@dataclass(frozen=True)
class Place:
    """Everything one showing of the rate page needs, from two reads of the store
    (the rater's ratings and their queue)."""

    done: int
    total: int
    median_seconds: float | None
    history: int  # items scored: how far Back can go
    back: int  # steps back actually shown (0: the current item)
    item: Item | None  # None: the queue is done (or empty)
    after: Item | None  # the next unrated item, to prefetch


def place(engine: Engine, rater_id: str, back: int = 0) -> Place:
    """Where the rater is: the current item, or the item `back` steps back
    (falling back to the current item when there is none that far back)."""
    mine = store.read_ratings(engine, rater_id=rater_id)
    q = store.queue(engine, rater_id, done=mine)
    history = 0 if mine.empty else len(mine.groupby(["image_id", "kind"]))
    item = _previous(q, mine, back) if back and history else None
    back = back if item is not None else 0
    if item is None:
        item = _current(q)
    after = _next_after(q, item) if item is not None and not back else None
    done = int(q["rated_at"].notna().sum())
    return Place(done, len(q), _median_seconds(mine), history, back, item, after)


def _plain(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value


def _median_seconds(mine: pd.DataFrame) -> float | None:
    """Median time per rating: the first version of each item (a correction's
    time is not the time the rating took)."""
    firsts = mine.loc[mine["version"] == 1, "seconds_spent"].dropna()
    return float(firsts.median()) if len(firsts) else None


def progress(engine: Engine, rater_id: str) -> tuple[int, int, float | None]:
    """(items rated, items in the queue, median seconds per rating or None)."""
    q = store.queue(engine, rater_id)
    done = int(q["rated_at"].notna().sum())
    return done, len(q), _median_seconds(store.read_ratings(engine, rater_id=rater_id))


def all_progress(engine: Engine) -> pd.DataFrame:
    """Per rater: done, total, median seconds per rating, active (the admin page)."""
    raters = store.list_raters(engine)
    assigned = store.read_assignments(engine)
    rated = store.read_ratings(engine)
    rows = []
    for r in raters.itertuples():
        mine = rated[rated["rater_id"] == r.rater_id]
        items = assigned[assigned["rater_id"] == r.rater_id]
        done_keys = set(zip(mine["image_id"], mine["kind"], strict=True))
        done = sum(
            (i, k) in done_keys for i, k in zip(items["image_id"], items["kind"], strict=True)
        )
        total = len(items)
        rows.append(
            dict(
                rater_id=r.rater_id,
                is_admin=bool(r.is_admin),
                active=pd.isna(r.revoked_at),
                done=done,
                total=total,
                fraction=done / total if total else float("nan"),
                median_seconds=_median_seconds(mine),
                corrections=int((mine["version"] > 1).sum()),
            )
        )
    cols = [
        "rater_id",
        "is_admin",
        "active",
        "done",
        "total",
        "fraction",
        "median_seconds",
        "corrections",
    ]
    return pd.DataFrame(rows, columns=cols)


def make_rating(
    item: Item,
    form_values: dict[str, Any],
    *,
    rater_id: str,
    submission_id: str,
    image_checksum: str | None,
    seconds_spent: float | None,
    window_settings: dict[str, Any] | str | None,
) -> dict[str, Any]:
    """The dict `ratings.save_rating` stores for a form submission.

    Every asked axis needs a value 1-5 (a RatingsError names every
    missing one); artifact level is None for a DWI-derived unit whatever the
    form held; the comment is kept verbatim (None if blank).
    """
    out: dict[str, Any] = dict(
        image_id=item.image_id,
        rater_id=rater_id,
        kind=item.kind,
        submission_id=submission_id,
        image_checksum=image_checksum,
    )
    missing = []
    for axis in AXES:
        value = form_values.get(axis)
        if axis not in item.axes:
            out[axis] = None
        elif value is None or isinstance(value, bool) or not 1 <= int(value) <= 5:
            missing.append(AXIS_LABELS[axis].lower())
        else:
            out[axis] = int(value)
    if missing:
        raise RatingsError(f"choose a value 1-5 for {', '.join(missing)}")
    for flag in FLAGS:
        out[flag] = bool(form_values.get(flag, False))
    comment = form_values.get("comment")
    out["comment"] = comment if isinstance(comment, str) and comment.strip() else None
    out["seconds_spent"] = None if seconds_spent is None else max(0.0, float(seconds_spent))
    if isinstance(window_settings, dict):
        window_settings = json.dumps(window_settings, sort_keys=True)
    out["window_settings"] = window_settings
    return out


def is_unreachable(exc: BaseException) -> bool:
    """Whether a store call failed because the database could not be reached
    (a server down or restarting, a network cut), not because of what was sent."""
    return isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError)) or (
        isinstance(exc, sa_exc.DBAPIError) and bool(exc.connection_invalidated)
    )


def submit(engine: Engine, rating: dict[str, Any]) -> store.Saved:
    """Save a rating built by `make_rating` (a resubmission of the same
    submission id returns ``duplicate=True`` and writes nothing)."""
    return store.save_rating(engine, rating)
