"""The manifest's guard against broken images: the per-image corruption
checks of `curate metrics`.

The IQS is per group (the paper's design), so a NaN-filled or all-zero volume
with a readable header inherits its group's score and passes ``--iqs-max``.
This step drops the images whose metrics row carries a corruption problem
(`CORRUPT`). A cut field of view, odd spacing or constant slices are not
corruption: the IQS's FOV flag and ``--max-spacing`` handle them.

An image is *unchecked* when the table has no row for it, or its row does
not describe the file as it is now: the row's ``source_mtime_ns`` (the
file's mtime when it was measured) differs from the file's, or, in a table
without that column, the file is newer than the table. Unchecked images are
kept unless ``require_metrics``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from openmind_curate import tables
from openmind_curate.errors import InputError
from openmind_curate.manifest.filters import Step
from openmind_curate.schema import METRICS

#: Problem codes of `curate metrics` that mean the data is broken.
CORRUPT: tuple[str, ...] = ("unreadable", "nonfinite", "all_zero", "constant")

#: The columns read from a metrics table (``source_mtime_ns`` when present).
COLUMNS = pa.schema([METRICS.field(c) for c in ("image_id", "problems", "source_mtime_ns")])


def default_path(index_path: str | os.PathLike[str]) -> Path:
    """``<index folder>/../metrics/metrics.parquet``: where `curate metrics`
    writes in the layout `curate demo` and the defaults use (``index/`` and
    ``metrics/`` side by side in one working folder)."""
    return Path(os.path.abspath(index_path)).parent.parent / "metrics" / "metrics.parquet"


@dataclass(frozen=True)
class MetricsTable:
    """A metrics table's rows (`COLUMNS`) and the file's mtime, the staleness
    signal of rows without their own stamp."""

    path: Path
    table: pa.Table
    mtime_ns: int

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> MetricsTable:
        """The table at `path`, checked; `InputError` names the file and the problem."""
        path = Path(os.path.abspath(path))
        hint = "(make it with `curate metrics`, or give --metrics)"
        table = tables.read_table(
            path, "--metrics", ["image_id", "problems"], schema=COLUMNS, hint=hint
        )
        return cls(path, table, os.stat(path).st_mtime_ns)


def find(index_path: str | os.PathLike[str], given: str | os.PathLike[str] | None) -> Path | None:
    """The metrics table to use: `given`, else `default_path` when it exists."""
    if given is not None:
        return Path(os.path.abspath(given))
    path = default_path(index_path)
    return path if path.is_file() else None


def _rule(require: bool, keep_flagged: bool) -> str:
    """E.g. ``no unreadable/nonfinite/all_zero/constant; unchecked kept``."""
    flagged = "flagged kept (--keep-flagged)" if keep_flagged else f"no {'/'.join(CORRUPT)}"
    unchecked = "unchecked dropped (--require-metrics)" if require else "unchecked kept"
    return f"{flagged}; {unchecked}"


def _has_problem(problems: pa.Array, code: str) -> np.ndarray:
    """Which rows' problem lists contain `code`."""
    out = np.zeros(len(problems), bool)
    flat = pc.list_flatten(problems).to_numpy(zero_copy_only=False)
    parent = pc.list_parent_indices(problems).to_numpy(zero_copy_only=False)
    out[parent[flat == code]] = True
    return out


def step(
    ids: pa.ChunkedArray | pa.Array,
    keep: np.ndarray,
    metrics: MetricsTable,
    mtimes: Callable[[np.ndarray], np.ndarray],
    *,
    require: bool = False,
    keep_flagged: bool = False,
) -> tuple[Step, np.ndarray]:
    """The metrics step after the other filters (`keep`): its counts and the
    rows it keeps. `mtimes(rows)` gives the current mtime_ns of those rows'
    files (-1 where a file cannot be read: unchecked)."""
    ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    m = metrics.table
    pos = pc.index_in(ids, value_set=m.column("image_id"))
    has_row = np.asarray(pc.is_valid(pos).to_numpy(zero_copy_only=False), bool) & keep
    stale = np.zeros(len(keep), bool)
    rows = np.flatnonzero(has_row)
    if rows.size:
        now = mtimes(rows)
        taken = pa.array(pos.to_numpy(zero_copy_only=False)[rows].astype(np.int64))
        if "source_mtime_ns" in m.column_names:
            stamp = m.column("source_mtime_ns").combine_chunks().take(taken)
            stamp = np.asarray(pc.fill_null(stamp, -1).to_numpy(zero_copy_only=False), np.int64)
        else:
            stamp = np.full(rows.size, -1, np.int64)
        own = stamp >= 0
        stale[rows] = (now < 0) | np.where(own, now != stamp, now > metrics.mtime_ns)
    checked = has_row & ~stale
    problems = m.column("problems").combine_chunks().take(pos)
    by_code = {c: _has_problem(problems, c) & checked for c in CORRUPT}
    flagged = np.logical_or.reduce(list(by_code.values()))
    unchecked = keep & ~checked
    kept = keep.copy()
    if not keep_flagged:
        kept &= ~flagged
    if require:
        kept &= ~unchecked
    n = lambda a: int(np.count_nonzero(a))  # noqa: E731
    detail: dict[str, Any] = {
        "metrics": str(metrics.path),
        "flagged": n(flagged),
        "flagged_dropped": 0 if keep_flagged else n(flagged),
        "by_problem": {c: n(v) for c, v in by_code.items() if v.any()},
        "flagged_images": ids.filter(pa.array(flagged)).to_pylist(),
        "unchecked": n(unchecked),
        "unchecked_dropped": n(unchecked) if require else 0,
        "no_metrics_row": n(keep & ~has_row),
        "stale": n(stale),
    }
    return Step("metrics", _rule(require, keep_flagged), n(keep), n(kept), detail), kept


def no_table(index_path: str | os.PathLike[str]) -> InputError:
    """--require-metrics without a metrics table: a step left out, said so."""
    return InputError(
        f"--require-metrics: no metrics table at {default_path(index_path)}: run "
        "`curate metrics` first, or give --metrics FILE"
    )


def not_found(index_path: str | os.PathLike[str], keep: np.ndarray) -> dict[str, Any]:
    """The sidecar's note when no metrics table was found: no image checked."""
    return {
        "metrics": None,
        "looked_for": str(default_path(index_path)),
        "unchecked": int(np.count_nonzero(keep)),
        "note": "no metrics table: no image checked for corruption",
    }
