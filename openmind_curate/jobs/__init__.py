"""Batch execution shared by every stage that walks images.

`run_batch` maps a function over items on a local process pool (default) or a
Dask cluster, with a progress bar, a per-item error record, atomic outputs and
skipping of finished items on re-run.
"""

from openmind_curate.jobs.atomic import atomic_path, atomic_write_bytes, atomic_write_text
from openmind_curate.jobs.runner import BatchResult, ItemResult, JobOptions, run_batch

__all__ = [
    "BatchResult",
    "ItemResult",
    "JobOptions",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "run_batch",
]
