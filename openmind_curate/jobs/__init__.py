"""Batch execution shared by every stage that walks images.

`run_batch` maps a function over items on a local process pool (default) or a
Dask cluster, with a progress bar, a per-item error record, atomic outputs and
skipping of finished items on re-run (redoing those made with other options),
and a clean stop on Ctrl-C/SIGTERM (`BatchInterrupted`).
"""

from openmind_curate.jobs.atomic import atomic_path, atomic_write_bytes, atomic_write_text
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
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "marker_fields",
    "marker_is_current",
    "options_hash",
    "source_stamp",
    "run_batch",
]
