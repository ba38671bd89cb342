"""`curate report` as one call: read the index and the user's tables, write the page.

`run` is what the command calls and the Python API: the index goes through
the store (`index.read_frame`), the IQS table and the manifest through the
one reader of user tables (`tables.read_frame`), so a bad file is refused
with ``<what> <file>: <problem>`` before anything is written.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from openmind_curate import index as store
from openmind_curate import preflight, tables
from openmind_curate.manifest import corruption
from openmind_curate.report.page import MetricsInput, write_report
from openmind_curate.schema import IMAGE_INDEX, MANIFEST

#: What `--iqs` reads: an IQS table's scores (`curate iqs --out`), 1 to 5.
IQS_COLUMNS = pa.schema([IMAGE_INDEX.field("image_id"), IMAGE_INDEX.field("iqs")])
#: What `--manifest` reads: which images it kept, and their split when it has one.
MANIFEST_COLUMNS = pa.schema([MANIFEST.field("image_id"), MANIFEST.field("split")])


@dataclass
class ReportRun:
    """What `run` wrote, and what it covered."""

    page: Path
    images: int
    datasets: int


def run(
    index: str | os.PathLike[str],
    out: str | os.PathLike[str] = "report",
    *,
    iqs: str | os.PathLike[str] | None = None,
    manifest: str | os.PathLike[str] | None = None,
    metrics: str | os.PathLike[str] | None = None,
) -> ReportRun:
    """Write the report of `index` into the folder `out`. `iqs` (parquet or
    CSV with image_id, iqs) replaces the index's scores; `manifest` (parquet
    or CSV with image_id) marks the images it kept; `metrics` (the table of
    `curate metrics`; default: the one `build-manifest` uses, beside the
    index, when it exists) gives the automatic checks' section."""
    frame = store.read_frame(index)
    scores = None
    if iqs is not None:
        scores = tables.read_frame(iqs, "IQS table", IQS_COLUMNS.names, schema=IQS_COLUMNS)
    kept = None
    if manifest is not None:
        kept = tables.read_frame(manifest, "manifest", ("image_id",), schema=MANIFEST_COLUMNS)
    checks = read_metrics(index, metrics)
    folder = preflight.output_dir(Path(out))
    sources = {"index": os.path.abspath(index)}
    if iqs is not None:
        sources["IQS"] = os.path.abspath(iqs)
    if manifest is not None:
        sources["manifest"] = os.path.abspath(manifest)
    if checks.table is not None:
        sources["metrics"] = checks.path
    page = write_report(frame, folder, iqs=scores, manifest=kept, sources=sources, metrics=checks)
    return ReportRun(page, len(frame), int(frame["dataset_id"].nunique()))


def read_metrics(
    index: str | os.PathLike[str], given: str | os.PathLike[str] | None
) -> MetricsInput:
    """The metrics table as `build-manifest` finds it (`corruption.find`):
    `given`, else the default beside the index when it exists; a bad file is
    refused (`InputError` naming it)."""
    path = corruption.find(index, given)
    if path is None:
        return MetricsInput(None, str(corruption.default_path(index)), corruption.CORRUPT)
    table = corruption.MetricsTable.read(path).table.select(["image_id", "problems"])
    return MetricsInput(table.to_pandas(), str(path), corruption.CORRUPT)
