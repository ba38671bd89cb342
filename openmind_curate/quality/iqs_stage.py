"""The IQS stage: ratings in, the Image Quality Score written into the index.

`run` is what `curate iqs` calls, and the Python API of the stage: it reads
the index and the ratings store, computes the paper's score per image and
per dataset x modality group (`quality.iqs`), optionally predicts a
per-image score from the automatic metrics (`quality.iqs_model`), writes
``iqs``, ``iqs_image`` and ``iqs_predicted`` into the index and the detailed
table (schema `IQS`) to a parquet file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from openmind_curate import index as store
from openmind_curate import preflight
from openmind_curate.quality import iqs as scoring
from openmind_curate.quality import rating_stage
from openmind_curate.quality.ratings import RatingsError

if TYPE_CHECKING:
    import pandas as pd

    from openmind_curate.quality.iqs_model import ModelResult

#: Where `curate iqs` writes the IQS table and reads the metrics (the demo's layout).
DEFAULT_OUT = Path("iqs/iqs.parquet")
DEFAULT_METRICS = Path("metrics/metrics.parquet")


@dataclass
class IqsRun:
    """What `run` did. `scores.table` has one row per index image (schema
    `IQS`), `scores.groups` one per dataset x modality group."""

    scores: scoring.IqsResult
    kept: pd.DataFrame  # images kept at IQS <= each of `iqs.THRESHOLDS`
    index: Path
    out: Path | None
    replaced: int  # index rows written
    model: ModelResult | None = None  # with model=True
    warnings: list[str] = field(default_factory=list)


def run(
    index: str | os.PathLike[str],
    *,
    db: str | None = None,
    out: str | os.PathLike[str] | None = None,
    model: bool = False,
    metrics: str | os.PathLike[str] = DEFAULT_METRICS,
    check_files: bool = False,
) -> IqsRun:
    """Score every image of `index` from the ratings in `db` (default: the
    ratings store beside the index) and write the scores into the index.

    Each rater's latest regular rating counts; repeat and gold ratings never
    do. With `model`, a per-image IQS is learnt from the `metrics` table
    (`curate metrics`) and written as ``iqs_predicted`` (null when too few
    images are rated). With `check_files`, every rated unit's files are hashed
    and a unit rated on a file changed since is named in the warnings. `out`
    (None: not written) receives the detailed table. An image re-crawled as
    changed while scoring is not written (a warning says how many).
    """
    index = Path(index)
    indexed = store.read(index)
    frame = indexed.to_pandas()
    rated = _regular_ratings(index, db)
    metrics_table = read_metrics(Path(metrics)) if model else None
    if out is not None:  # checked once the inputs are: a refused run makes no folder
        out = preflight.output_file(Path(out))
    scores = scoring.compute_iqs(frame, rated)
    values = scores.table[["image_id", "iqs", "iqs_image"]].copy()
    warnings = scores.warnings()
    fitted = None
    if metrics_table is not None:
        from openmind_curate.quality import iqs_model

        fitted = iqs_model.fit_predict(metrics_table, scores.table)
        values["iqs_predicted"] = values["image_id"].map(fitted.predictions).astype(float)
        if fitted.skipped:
            warnings.append(f"no per-image model: {fitted.skipped}; iqs_predicted is null")
    if check_files:
        warnings += _changed_files(frame, rated)
    # the files as scored: an image re-crawled as changed meanwhile is not written
    for col in ("size_bytes", "mtime_ns"):
        values[col] = _exact_ints(indexed.column(col).to_pylist(), values.index)
    written = store.set_columns(index, values)
    if written.skipped:
        warnings.append(
            f"{written.skipped} image(s) changed on disk while scoring; "
            "their values were not written (run `curate iqs` again)"
        )
    if out is not None:
        write_table(scores.table, out)
    kept = scoring.kept_table(scores.table["iqs"])
    return IqsRun(scores, kept, index, out, written.replaced, fitted, warnings)


def _regular_ratings(index: Path, db: str | None) -> pd.DataFrame:
    """The store's ratings, refused when none can feed the IQS."""
    from openmind_curate.quality import ratings

    engine = rating_stage.open_db(index, db, create=False)
    rated = ratings.read_ratings(engine)
    where = ratings.describe(rating_stage.db_location(index, db))
    if rated.empty:
        raise RatingsError(f"{where}: no ratings yet (raters score their queue with `curate rate`)")
    if not (rated["kind"] == "regular").any():
        raise RatingsError(f"{where}: only repeat or gold ratings, which never feed the IQS")
    return rated


def _changed_files(frame: pd.DataFrame, rated: pd.DataFrame) -> list[str]:
    changed = scoring.changed_files(frame, rated)
    if not changed:
        return []
    head = (
        f"{len(changed)} unit(s) were rated on a file that has changed since "
        "(or can no longer be read); re-rate them"
    )
    return [scoring.listing(head, changed, 5)]


def _exact_ints(values: list, index) -> pd.Series:
    """Exact ints (None if null), never NaN floats: the store compares them."""
    import pandas as pd

    return pd.Series(values, index=index, dtype=object)


def read_metrics(path: Path) -> pd.DataFrame:
    """The `curate metrics` table, checked: it exists, reads, and has image_id."""
    from openmind_curate import tables

    return tables.read_frame(
        path,
        "metrics table",
        ["image_id"],
        hint="(make it with `curate metrics`, or give --metrics)",
    )


def write_table(table: pd.DataFrame, out: Path) -> Path:
    """The detailed IQS table, validated against the `IQS` schema, written atomically."""
    import pyarrow.parquet as pq

    from openmind_curate.atomic import atomic_path
    from openmind_curate.schema import IQS, validate

    checked = validate(table, IQS)
    with atomic_path(out) as tmp:
        pq.write_table(checked, tmp)
    return out
