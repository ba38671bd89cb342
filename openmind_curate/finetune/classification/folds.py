"""Five folds, stratified by label and split by subject (our choice: C.2 says 5-fold only).

scikit-learn's `StratifiedGroupKFold` (shuffled, seeded) keeps each
subject's images in one fold and spreads every class over the folds as
evenly as the subjects allow, so a held-out fold never holds an image of a
subject the model trained on.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from openmind_curate.errors import InputError

FOLDS = 5


def assign_folds(
    labels: Sequence[str], subjects: Sequence[str], seed: int = 0, k: int = FOLDS
) -> np.ndarray:
    """The held-out fold (0..k-1) of each case."""
    from sklearn.model_selection import StratifiedGroupKFold

    labels, subjects = np.asarray(labels), np.asarray(subjects)
    n_subjects = len(np.unique(subjects))
    if n_subjects < k:
        raise InputError(
            f"{n_subjects} subject(s): {k}-fold cross-validation split by subject needs {k} or more"
        )
    fold = np.full(len(labels), -1, dtype=int)
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # a class of few subjects: `table` says so already
        warnings.filterwarnings("ignore", "The least populated class", UserWarning)
        split = list(splitter.split(np.zeros(len(labels)), labels, subjects))
    for i, (_, held_out) in enumerate(split):
        fold[held_out] = i
    return fold
