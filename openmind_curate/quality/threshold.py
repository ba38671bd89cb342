"""The one rule for "images kept at IQS <= t": `curate iqs`, the report and
`curate build-manifest --iqs-max` all count and keep through `kept_at`.

An IQS is a mean of means of integer ratings (the raters' mean per axis,
the mean over the axes, the mean over a group's units), so a score that is
exactly t on paper can come out of floating point a hair above it: three
raters' units scoring 16/9 and 29/9 give a group IQS of exactly 2.5, computed
as 2.5000000000000004. Such a score is kept at t. `TOLERANCE` is far below
any difference two real scores can have (rational numbers with small
denominators, at least 1e-4 apart) and far above float64's round-off at
scores of 1 to 5 (about 1e-15), so the rule keeps what the arithmetic
means, and every command decides the boundary the same way. An unrated
image (null or NaN) is never kept by a threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

#: A score at most this far above the threshold is kept (float round-off).
TOLERANCE = 1e-9


def scores_array(scores: Any) -> np.ndarray:
    """Scores (Arrow array or column, pandas Series, NumPy array, list) as
    float64, NaN where unrated."""
    if isinstance(scores, np.ndarray):
        return scores.astype(np.float64, copy=False)
    if hasattr(scores, "combine_chunks"):  # a pyarrow ChunkedArray
        scores = scores.combine_chunks()
    if hasattr(scores, "to_numpy") and hasattr(scores, "type"):  # a pyarrow Array
        import pyarrow as pa

        return np.asarray(scores.cast(pa.float64()).to_numpy(zero_copy_only=False), np.float64)
    if hasattr(scores, "to_numpy"):  # a pandas Series (nullable dtypes included)
        return np.asarray(scores.to_numpy(dtype="float64", na_value=np.nan), np.float64)
    return np.array([np.nan if v is None else v for v in scores], np.float64)


def kept_at(scores: Any, t: float) -> np.ndarray:
    """Per image, whether a threshold `t` keeps it: IQS <= t + `TOLERANCE`
    (lower is better); unrated images never."""
    return scores_array(scores) <= t + TOLERANCE


def count_kept(scores: Any, thresholds: Sequence[float]) -> list[int]:
    """How many images each threshold keeps (`kept_at`)."""
    values = scores_array(scores)
    return [int(np.count_nonzero(values <= t + TOLERANCE)) for t in thresholds]
