"""Whole volumes for classification: preprocessed as for pre-training, then resized.

Each image goes through pre-training's preprocessing (`train.preprocess.prepare`:
LPS, resampled to the spacing, cropped to its nonzero box, z-scored over it),
then the whole volume is resized to the run's ``--resize`` with nnU-Net's
resampling (``resample_data_or_seg_to_shape``, third-order spline), as the
image classification framework the paper used does (appendix C.2: nnU-Net
preprocessing, whole volumes resized). One ``<case_id>.npy`` (float32) per
image, and a marker; a batch stage, so a re-run skips what is done, redoes
what other options made, and an image that cannot be used (unreadable,
empty, constant, NaN) is recorded as rejected with its reason while the
batch goes on. Under torchrun rank 0 prepares the volumes and the other
ranks wait for its result (`publish`).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from openmind_curate.atomic import atomic_path, atomic_write_text
from openmind_curate.jobs import JobOptions, source_stamp
from openmind_curate.jobs.stage import StageJob, records, run_stage
from openmind_curate.train.preprocess import PrepJob, PreprocessConfig, Rejected, prepare

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class VolumeConfig:
    """How every volume is made (its hash marks each output)."""

    spacing: float | None = 1.0  # mm isotropic; None keeps each image's voxels
    resize: tuple[int, int, int] = (160, 192, 192)  # (D, H, W) after preprocessing


@dataclass(frozen=True)
class VolumeJob(StageJob):
    case_id: str
    source: str
    out: str
    config: VolumeConfig

    @property
    def marker(self) -> Path:
        return Path(self.out) / f"{self.case_id}.json"

    @property
    def array(self) -> Path:
        return array_path(self.out, self.case_id)


def array_path(out: str | Path, case_id: str) -> Path:
    """Where a case's volume is kept."""
    return Path(out) / f"{case_id}.npy"


def resize(image: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """`image` (D, H, W) resized to `shape` by nnU-Net's data resampling
    (order 3, no separate axis: the image is isotropic)."""
    from nnunetv2.preprocessing.resampling.default_resampling import (
        resample_data_or_seg_to_shape,
    )

    if tuple(image.shape) == tuple(shape):
        return image.astype(np.float32, copy=False)
    old = np.ones(3)
    new = old * np.array(image.shape) / np.array(shape)
    out = resample_data_or_seg_to_shape(image[None], shape, old, new, is_seg=False, order=3)
    return np.ascontiguousarray(out[0], dtype=np.float32)


def process(job: VolumeJob) -> dict[str, Any]:
    """One volume (or its rejection) and its marker; returns the record."""
    stamp = source_stamp(job.source)
    record: dict[str, Any] = {"case_id": job.case_id, "source": job.source}
    try:
        prep = PrepJob(job.case_id, job.source, None, None, "", (), _prep_config(job.config))
        arrays, info = prepare(prep)
        volume = resize(arrays["image"], job.config.resize)
        with atomic_path(job.array) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, volume)
        record.update(status="ok", reason=None, preprocessed_shape=info["shape"])
    except Rejected as exc:
        record.update(status="rejected", reason=str(exc))
    return job.write_marker(record, stamp)


def _prep_config(config: VolumeConfig) -> PreprocessConfig:
    return PreprocessConfig(spacing=config.spacing)


def prepare_volumes(
    cases: pd.DataFrame, out: Path, config: VolumeConfig, options: JobOptions
) -> pd.DataFrame:
    """Every case's volume under `out`; `cases` with ``status`` ("ok",
    "rejected", "failed") and ``reason`` added."""
    out.mkdir(parents=True, exist_ok=True)
    jobs = [
        VolumeJob(str(r.case_id), str(r.path), str(out), config)
        for r in cases.itertuples(index=False)
    ]
    batch = run_stage(process, jobs, options)
    status, reason = [], []
    for res, record in zip(batch.results, records(jobs, batch), strict=True):
        if record is None:
            status.append("failed")
            reason.append(res.error)
        else:
            status.append(record["status"])
            reason.append(record.get("reason"))
    return cases.assign(status=status, reason=reason)


#: What tells one torchrun job from another (the same on every rank of a job).
JOB_VARIABLES = ("TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT", "MASTER_ADDR", "MASTER_PORT")


def batch_key(cases: pd.DataFrame, config: VolumeConfig) -> str:
    """A hash of the batch (its images and options) and of the torchrun job:
    names `publish`'s file, so a file left by another job is never read."""
    from openmind_curate.jobs.runner import options_hash

    listed = "".join(f"{c}={p};" for c, p in zip(cases["case_id"], cases["path"], strict=True))
    job = ";".join(os.environ.get(v, "") for v in JOB_VARIABLES)
    text = listed + options_hash(config) + job
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def publish(out: Path, key: str, status: pd.DataFrame) -> Path:
    """Rank 0's batch result for the other ranks of a torchrun job, which
    wait for it (`wait_published`) instead of preparing the same volumes."""
    rows = status[["case_id", "status", "reason"]].to_dict(orient="records")
    return atomic_write_text(published(out, key), json.dumps(rows))


def wait_published(cases: pd.DataFrame, out: Path, key: str, poll_s: float = 1.0) -> pd.DataFrame:
    """`cases` with the status rank 0 published for this batch, once it is there
    (torchrun ends the other ranks if rank 0 fails, so this never waits alone)."""
    path = published(out, key)
    while not path.is_file():
        time.sleep(poll_s)
    found = pd.DataFrame(json.loads(path.read_text()))
    return cases.merge(found, on="case_id", how="left")


def published(out: Path, key: str) -> Path:
    return Path(out) / f"ready-{key}.json"


def load_batch(paths: list[str] | list[Path]) -> torch.Tensor:
    """Volumes (b, 1, D, H, W) float32 from their files, on the CPU."""
    import torch

    return torch.from_numpy(np.stack([np.load(p) for p in paths]))[:, None]
