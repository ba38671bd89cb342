"""The stage pattern, written once: one batch item per input file, finished
when its completion marker exists and is current.

The marker is a JSON record written last (so its presence means "done"). It
records the hash of the options the item was made with and the input's size
and mtime taken before it was read (`runner.marker_fields`), so a re-run
redoes an item made with other options or from a file changed since, and
skips the rest (`runner.marker_is_current`).

A stage's job is a frozen dataclass with `source` (the input file), `config`
(the options dataclass) and a `marker` path, deriving from `StageJob`;
`run_stage` runs a batch of them and `records` reads back each item's record.
DWI maps, masks, metrics and preprocessing are stages.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from openmind_curate.atomic import atomic_write_text
from openmind_curate.jobs.runner import (
    BatchResult,
    JobOptions,
    marker_fields,
    marker_is_current,
    options_hash,
    run_batch,
)


class StageJob:
    """Base of a stage's batch item (subclasses are frozen dataclasses with
    ``source: str`` and ``config``, and define the `marker` path)."""

    source: str
    config: Any

    @property
    def marker(self) -> Path:
        raise NotImplementedError

    def __str__(self) -> str:  # the item's label in progress and errors
        return self.source

    def outputs(self) -> list[Path]:
        return [self.marker]

    def is_current(self) -> bool:
        """Whether the marker was made with this job's options, from the
        source as it is now. A marker without a hash, from an older release,
        counts as current: an upgrade does not recompute a corpus."""
        return marker_is_current(self.marker, options_hash(self.config), self.source)

    def marked(self, record: dict[str, Any], stamp: dict[str, int]) -> dict[str, Any]:
        """`record` with the marker fields (`stamp`: the source's `source_stamp`,
        taken before it was read)."""
        return {**record, **marker_fields(self.config, stamp)}

    def write_marker(
        self, record: dict[str, Any], stamp: dict[str, int], **json_options: Any
    ) -> dict[str, Any]:
        """Write the marked record atomically as the marker (last, after every
        other output); returns it."""
        record = self.marked(record, stamp)
        atomic_write_text(self.marker, json.dumps(record, **json_options))
        return record


def is_current(job: StageJob) -> bool:
    """The runner's `current` hook: the job's own `StageJob.is_current`."""
    return job.is_current()


def outputs(job: StageJob) -> list[Path]:
    """The runner's `outputs` hook: the job's own `StageJob.outputs`."""
    return job.outputs()


def run_stage(
    func: Callable[[Any], Any], jobs: Sequence[StageJob], options: JobOptions
) -> BatchResult:
    """`run_batch` with the stage hooks: finished, current items are skipped;
    those made with other options are redone unless ``options.keep_existing``."""
    return run_batch(func, jobs, options, outputs=outputs, current=is_current)


def records(jobs: Sequence[StageJob], batch: BatchResult) -> list[dict[str, Any] | None]:
    """Each item's record: what a finished item returned, a skipped item's
    marker as it is on disk, None for a failed item."""
    found: list[dict[str, Any] | None] = []
    for job, res in zip(jobs, batch.results, strict=True):
        if res.status == "done":
            found.append(res.value)
        elif res.status == "skipped":
            found.append(json.loads(job.marker.read_text()))
        else:
            found.append(None)
    return found
