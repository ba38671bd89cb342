"""Batch execution shared by every stage that walks images.

`run_batch` maps a function over items on a local process pool (default) or a
Dask cluster, with a progress bar, a per-item error record, atomic outputs and
skipping of finished items on re-run (redoing those made with other options),
and a clean stop on Ctrl-C/SIGTERM (`BatchInterrupted`, defined with the
other errors in `openmind_curate.errors`); `run_batch` lives in `runner`.
`stage` is the stage pattern on top of it (one item per input file, done
when its completion marker is current), used by the DWI, masks, metrics and
preprocess stages.
The atomic writes themselves are `openmind_curate.atomic` (a plain I/O module
below this one).
"""

from openmind_curate.jobs.runner import (
    BatchInterrupted,
    BatchResult,
    ItemResult,
    JobOptions,
    marker_fields,
    marker_is_current,
    options_hash,
    run_batch,
    source_stamp,
)

__all__ = [
    "BatchInterrupted",
    "BatchResult",
    "ItemResult",
    "JobOptions",
    "marker_fields",
    "marker_is_current",
    "options_hash",
    "source_stamp",
    "run_batch",
]
