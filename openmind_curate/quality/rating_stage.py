"""The rating stage's entry points: the Python API behind `curate raters`,
`curate ratings` and `curate rate`.

The ratings store lives beside the index (``ratings.sqlite``) unless a
database is named (a SQLite file or a ``postgresql://`` URL). These functions
open it, plan who rates what (`plan`), import and export ratings, compute the
agreement tables and check that the rater app has something to serve.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from openmind_curate import index as store
from openmind_curate import preflight
from openmind_curate.errors import InputError

if TYPE_CHECKING:
    import pandas as pd
    from sqlalchemy.engine import Engine

    from openmind_curate.quality.agreement import AgreementReport
    from openmind_curate.quality.plan import PlanConfig

#: The tables `agreement` writes, in order.
AGREEMENT_TABLES = ("axes", "pairs", "bias", "intra", "gold")


def db_location(index: str | os.PathLike[str], db: str | None = None) -> str:
    """The ratings database of `index`: `db`, else ``ratings.sqlite`` beside the index."""
    from openmind_curate.quality.ratings import default_db

    return db if db else str(default_db(index))


def open_db(index: str | os.PathLike[str], db: str | None = None, *, create: bool = True) -> Engine:
    """An engine on the ratings database of `index` (made, with its tables,
    if `create`; otherwise a missing SQLite file is an error naming it)."""
    from openmind_curate.quality import ratings

    where = db_location(index, db)
    if "://" not in where and create:
        preflight.output_file(Path(where), "--db")
    return ratings.connect(where, create=create)


@dataclass
class PlanOutcome:
    """What `plan` assigned: the candidate units, the picked ones, the units
    left out with a reason, the new queue rows and how many were new."""

    config: PlanConfig
    candidates: pd.DataFrame
    picked: pd.DataFrame
    not_rated: pd.DataFrame
    rows: pd.DataFrame
    added: int
    db: str


def plan(
    index: str | os.PathLike[str],
    config: PlanConfig,
    *,
    db: str | None = None,
    gold: str | os.PathLike[str] | None = None,
    raters: Sequence[str] | None = None,
) -> PlanOutcome:
    """Pick `config.per_group` units per dataset x modality and queue each for
    `config.raters` raters, in a seeded random order (`quality.plan`).

    `raters` defaults to every active rater who is not an admin; `gold` is a
    CSV/TSV/parquet file of gold items (image_id and the known answers),
    checked and stored before any assignment. Re-running adds only what is new.
    """
    from openmind_curate.quality import plan as planning
    from openmind_curate.quality import ratings

    frame = store.read_frame(index)
    engine = open_db(index, db)
    candidates, not_rated = planning.units(frame)
    picked = planning.pick_units(candidates, config)
    gold_units = _gold_units(Path(gold), candidates, engine) if gold else None
    active = ratings.list_raters(engine)
    active = active[active["revoked_at"].isna()]
    names = list(raters or sorted(active.loc[~active["is_admin"].astype(bool), "rater_id"]))
    unknown = sorted(set(names) - set(active["rater_id"]))
    if unknown:
        raise InputError(f"not active raters: {', '.join(unknown)} (see `curate raters list`)")
    rows = planning.assign(picked, names, config, gold_units)
    added = ratings.add_assignments(engine, rows, plan=config.name())
    where = ratings.describe(db_location(index, db))
    return PlanOutcome(config, candidates, picked, not_rated, rows, added, where)


def _gold_units(path: Path, candidates: pd.DataFrame, engine: Engine) -> pd.DataFrame:
    """The gold file's rows, checked: known units, answers in range; stored as gold answers."""
    import pandas as pd

    from openmind_curate.quality import ratings

    need = ["image_id", *ratings.AXES, *ratings.FLAGS]
    df = ratings.read_table_file(preflight.input_files([path])[0], "gold file", need)
    known = candidates.set_index("image_id")
    bad = [
        f"row {i + 2}: image_id {v!r} is not a unit of the index"
        for i, v in enumerate(df["image_id"])
        if v not in known.index
    ]
    for axis in ratings.AXES:
        values = pd.to_numeric(df[axis], errors="coerce")
        out = ~values.between(1, 5) & (df[axis].notna() | (axis != "artifact_level"))
        bad += [f"row {i + 2}: {axis} {df[axis].iloc[i]!r} is not 1-5" for i in df.index[out]]
    if bad:
        raise InputError(f"{path}: {len(bad)} problem(s), no plan written:\n  " + "\n  ".join(bad))
    ratings.set_gold(engine, df)
    return df.join(known[["dataset_id", "group_name"]], on="image_id")


def import_file(
    path: str | os.PathLike[str], index: str | os.PathLike[str], *, db: str | None = None
) -> tuple[int, int]:
    """Add the ratings of a CSV/TSV/parquet file in the RATINGS schema.

    Every row is checked first (ranges, image_ids of the index, known raters);
    one bad row rejects the file and nothing is written. Returns (added, rows
    in the file); rows already present are skipped.
    """
    from openmind_curate.quality import ratings

    (path,) = preflight.input_files([Path(path)])
    df = ratings.read_table_file(path, "ratings file")
    known = set(store.read_frame(index)["image_id"])
    added = ratings.import_ratings(open_db(index, db), df, known, source=str(path))
    return added, len(df)


def export_file(
    out: str | os.PathLike[str],
    index: str | os.PathLike[str],
    *,
    db: str | None = None,
    all_versions: bool = False,
) -> int:
    """Write the ratings (latest versions unless `all_versions`) to a .csv or
    .parquet file; returns the number of rows."""
    from openmind_curate.quality import ratings

    engine = open_db(index, db, create=False)
    return ratings.export_ratings(engine, Path(out), all_versions=all_versions)


def agreement(
    index: str | os.PathLike[str],
    *,
    db: str | None = None,
    out: str | os.PathLike[str] | None = None,
) -> AgreementReport:
    """Inter-rater, intra-rater and gold agreement of the stored ratings
    (`quality.agreement`); with `out`, each table is also written there as
    ``agreement_<name>.csv``."""
    from openmind_curate.quality import ratings
    from openmind_curate.quality.agreement import agreement as compute

    engine = open_db(index, db, create=False)
    report = compute(ratings.read_ratings(engine), ratings.read_gold(engine))
    if out is not None:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        for name in AGREEMENT_TABLES:
            getattr(report, name).to_csv(folder / f"agreement_{name}.csv", index=False)
    return report


def ready_to_rate(index: str | os.PathLike[str], *, db: str | None = None) -> str:
    """Check that the rater app has something to serve: a readable index,
    raters, and a plan (assignments). Returns the database location."""
    from openmind_curate.quality import ratings

    store.read(index)  # a readable index, or a clear message now
    engine = open_db(index, db, create=False)
    if ratings.list_raters(engine).empty:
        raise InputError("no raters yet: add one with `curate raters add NAME`")
    if ratings.read_assignments(engine).empty:
        raise InputError(
            f"{ratings.describe(db_location(index, db))} has raters but no plan, so every "
            "queue is empty: assign units with `curate ratings plan`"
        )
    return db_location(index, db)


def simulated_ratings(
    index: str | os.PathLike[str], truth: str | os.PathLike[str], n_raters: int = 3
) -> tuple[PlanOutcome, int]:
    """The demo's rating step: `n_raters` simulated raters (``simulated-1``,
    ...) get a plan (2 units per group, 2 raters each, 10% repeats) and fill it
    from a `curate synth` truth table, with noise and a bias per rater. Only
    their queues are filled, never a real rater's. Returns the plan and the
    number of ratings saved. Demo only."""
    import pandas as pd

    from openmind_curate.quality import ratings
    from openmind_curate.quality.plan import PlanConfig
    from openmind_curate.quality.simulate import simulate

    engine = open_db(index)
    names = [f"simulated-{i}" for i in range(1, n_raters + 1)]
    have = set(ratings.list_raters(engine)["rater_id"])
    for name in names:
        if name not in have:
            ratings.add_rater(engine, name)
    config = PlanConfig(per_group=2, raters=2, seed=0, repeat_fraction=0.1)
    outcome = plan(index, config, raters=names)
    return outcome, simulate(engine, pd.read_parquet(truth), names)
