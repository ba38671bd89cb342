"""The DWI stage: the Python API behind `curate dwi`."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from openmind_curate.errors import InputError
from openmind_curate.index_input import read_images

if TYPE_CHECKING:
    import pandas as pd

    from openmind_curate.dwi.pipeline import DwiConfig
    from openmind_curate.index import RowsResult
    from openmind_curate.jobs import BatchResult, JobOptions

#: The --denoise choices; "none" skips denoising.
DENOISERS = ("mppca", "patch2self", "none")


@dataclass
class DwiRun:
    """The batch, one JSON-able result per input (input, status, outputs,
    seconds, warnings; or error), and, from an index, the map rows it took."""

    batch: BatchResult
    lines: list[dict[str, Any]]
    update: RowsResult | None = None


def run(
    out: str | os.PathLike[str],
    config: DwiConfig,
    options: JobOptions,
    *,
    files: Sequence[str | os.PathLike[str]] | None = None,
    index: str | os.PathLike[str] | None = None,
    frame: pd.DataFrame | None = None,
) -> DwiRun:
    """Denoise, Gibbs, motion, N4 and a brain mask, then FA, MD and T2w (mean
    b0) maps for each DWI series, under `out` (`dwi.run`).

    The series are `files`, or every DWI of `index`, whose maps are then added
    to the index as derived rows (one of the two). `frame`: the index as the
    caller already read it (read here if None).
    """
    from openmind_curate.dwi.run import (
        index_rows,
        jobs_for_files,
        jobs_for_index,
        run_jobs,
        update_index,
    )

    if (files is None) == (index is None):
        raise InputError("give DWI files or an index (one of the two)")
    if index is None:
        jobs = jobs_for_files([Path(f) for f in files or []], Path(out), config)
        batch, lines = run_jobs(jobs, options)
        return DwiRun(batch, lines)
    table = read_images(index) if frame is None else frame
    jobs = jobs_for_index(table, Path(out), config)
    batch, lines = run_jobs(jobs, options)
    return DwiRun(batch, lines, update_index(Path(index), index_rows(jobs, table)))


def config_for(
    denoise: str = "mppca",
    stride: int = 2,
    gibbs: bool = True,
    motion: bool = True,
    bias: bool = True,
) -> DwiConfig:
    """The pipeline's options from the command's: `denoise` is one of `DENOISERS`."""
    from openmind_curate.dwi.pipeline import DwiConfig

    if denoise not in DENOISERS:
        raise InputError(f"--denoise must be mppca, patch2self or none, not {denoise!r}")
    return DwiConfig(
        denoise=None if denoise == "none" else denoise,
        mppca_stride=stride,
        gibbs=gibbs,
        motion=motion,
        bias=bias,
    )
