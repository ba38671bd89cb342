"""`curate metrics`: quality metrics and corruption checks for every image of an index.

Each image's row is first written as ``<out>.parts/<image_id>.json`` (the
completion marker, so a killed run resumes; a row measured with another
MetricsConfig, by its ``options_hash``, is measured again), then all rows go
into one parquet table (`schema.METRICS`). The anatomy mask comes from the
index (`curate masks`) when there is one, else it is computed on the fly and
not kept. Images whose header the crawler could not read get a row with the
``unreadable`` problem and no metrics.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from openmind_curate.atomic import atomic_path
from openmind_curate.errors import DataError
from openmind_curate.jobs import JobOptions, source_stamp
from openmind_curate.jobs.stage import StageJob, run_stage
from openmind_curate.masks.compute import compute_masks, reference_volume
from openmind_curate.masks.run import phase_and_derived
from openmind_curate.nifti_io import NiftiReadError, load_nifti
from openmind_curate.quality.metrics import MetricsConfig, image_metrics
from openmind_curate.schema import METRICS, rows_to_table


@dataclass(frozen=True)
class MetricsJob(StageJob):
    image_id: str
    dataset_id: str
    path: str  # relative to the dataset root
    source: str
    modality: str | None
    parts: str  # folder of per-image rows
    anat_mask: str | None = None
    phase: bool = False
    derived: bool = False
    config: MetricsConfig = field(default_factory=MetricsConfig)

    @property
    def part(self) -> Path:
        return Path(self.parts) / f"{self.image_id}.json"

    marker = part  # the image's row is its completion marker


def parts_dir(out: Path) -> Path:
    return out.with_name(out.name + ".parts")


def jobs_for_index(index, out: Path, config: MetricsConfig | None = None) -> list[MetricsJob]:
    """One job per index row; the index is read through `index.read`, so its
    roots and mask paths are absolute."""
    cfg = config or MetricsConfig()
    parts = str(parts_dir(out))
    jobs = []
    for r in index.itertuples():
        phase, derived = phase_and_derived(r)
        mask = r.anat_mask_path if isinstance(r.anat_mask_path, str) else None
        source = str(Path(r.root) / r.path)
        jobs.append(
            MetricsJob(
                r.image_id,
                r.dataset_id,
                r.path,
                source,
                r.modality,
                parts,
                mask,
                phase,
                derived,
                cfg,
            )
        )
    return jobs


def _base(job: MetricsJob) -> dict[str, Any]:
    return {
        "image_id": job.image_id,
        "dataset_id": job.dataset_id,
        "path": job.path,
        "modality": job.modality,
    }


def unreadable_row(job: MetricsJob, error: str) -> dict[str, Any]:
    return {**_base(job), "problems": ["unreadable"], "corrupted": True, "error": error}


def measure(job: MetricsJob) -> dict[str, Any]:
    """One image's metrics row (the batch item). Unreadable data is a row, not a failure.

    The row records the options and version it was made with (`jobs.stage`;
    not columns of the table)."""
    start = time.perf_counter()
    stamp = source_stamp(job.source)  # before reading: a later change means redo
    try:
        data, affine = load_nifti(job.source)
    except NiftiReadError as exc:
        row = unreadable_row(job, str(exc))
    else:
        vol = reference_volume(data)
        working = None
        if job.anat_mask and Path(job.anat_mask).exists():
            anat = load_nifti(job.anat_mask)[0] > 0
            source = "index"
        else:
            forced = True if job.derived else None
            masks = compute_masks(vol, affine, phase=job.phase, brain_extracted=forced)
            anat, working, source = masks.anatomy, masks.working, "computed"
        if anat.shape != vol.shape:
            raise DataError(f"{job.anat_mask}: mask shape {anat.shape} != image {vol.shape}")
        values = image_metrics(vol, affine, anat, job.config, not job.phase, working)
        row = {**_base(job), **values, "mask_source": source}
    row["seconds"] = time.perf_counter() - start
    return job.write_marker(row, stamp, default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def run_metrics(index, out: Path, options: JobOptions, config: MetricsConfig | None = None):
    """Measure every image of `index` and write the table to `out`.

    Returns the batch and the table. Header failures found by the crawler
    become ``unreadable`` rows without opening the file again. Rows measured
    with another `config` are measured again unless ``options.keep_existing``.
    """
    jobs = jobs_for_index(index, out, config)
    parts_dir(out).mkdir(parents=True, exist_ok=True)
    status = dict(zip(index["image_id"], index["header_status"], strict=True))
    todo = []
    for job in jobs:
        if status[job.image_id] == "ok":
            todo.append(job)
        elif not job.part.exists() or not (options.keep_existing or job.is_current()):
            row = unreadable_row(job, f"{job.source}: header {status[job.image_id]}")
            job.write_marker(row, source_stamp(job.source))
    batch = run_stage(measure, todo, options)
    rows = [json.loads(j.part.read_text()) for j in jobs if j.part.exists()]
    table = rows_to_table(rows, METRICS)
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp)
    return batch, table
