"""The masks stage: the Python API behind `curate masks`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from openmind_curate.index_input import read_images

if TYPE_CHECKING:
    import pandas as pd

    from openmind_curate.index import RowsResult
    from openmind_curate.jobs import BatchResult, JobOptions


@dataclass
class MasksRun:
    """The batch, the record of every finished image (mask paths, anonymization
    found, whether it is a DWI-derived map) and what the index took."""

    batch: BatchResult
    records: list[dict[str, Any]]
    update: RowsResult


def run(
    index: str | os.PathLike[str],
    out: str | os.PathLike[str],
    options: JobOptions,
    *,
    frame: pd.DataFrame | None = None,
) -> MasksRun:
    """Anatomy and anonymization masks for every readable image of `index`,
    written under `out`, their paths written into the index (`masks.run`).

    `frame`: the index as the caller already read it (read here if None).
    Images changed or removed during the run are not recorded
    (``update.skipped`` counts them).
    """
    from openmind_curate.masks.run import jobs_for_index, run_jobs, update_index

    table = read_images(index) if frame is None else frame
    jobs = jobs_for_index(table, Path(out))
    batch, records = run_jobs(jobs, options)
    return MasksRun(batch, records, update_index(Path(index), records))
