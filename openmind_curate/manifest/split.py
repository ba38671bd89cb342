"""The subject-level train/validation split.

The unit is the subject (key: ``dataset_id/subject``), never the image: every
image of one person lands on the same side, so validation never sees a head
the model was trained on. An image without a subject entity is its own unit.

Each subject gets a rank from a keyed hash of (seed, key), and the lowest
ranks go to validation. A subject's side therefore depends only on the seed
and on how many subjects are drawn, not on the order of the index, and two
runs with the same seed and filters give the same split.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

#: Validation gets at least this many subjects when there are twice as many.
MIN_VAL_SUBJECTS = 5


@dataclass
class SplitCounts:
    val_fraction: float
    seed: int
    subjects: int = 0
    train_subjects: int = 0
    val_subjects: int = 0
    train_images: int = 0
    val_images: int = 0
    val_subjects_asked: int | None = None  # a count given instead of the fraction

    def to_json(self) -> dict:
        return {"subject_key": "dataset_id/subject", **self.__dict__}


def subject_keys(table: pa.Table) -> pa.Array:
    """``dataset_id/subject`` per row (``dataset_id/#image_id`` without a subject)."""
    own = pc.binary_join_element_wise("#", table.column("image_id"), "")
    subject = pc.coalesce(table.column("subject"), own)
    return pc.binary_join_element_wise(table.column("dataset_id"), subject, "/").combine_chunks()


def n_val_subjects(n_subjects: int, val_fraction: float) -> int:
    """``round(fraction * n)``, raised to `MIN_VAL_SUBJECTS` when that leaves
    training the larger part (a corpus of 10 subjects or more), else to half;
    at least one subject stays for training; 0 when the fraction is 0."""
    if val_fraction <= 0 or n_subjects < 2:
        return 0
    n = int(np.floor(val_fraction * n_subjects + 0.5))
    floor = min(MIN_VAL_SUBJECTS, n_subjects // 2)
    return min(max(n, floor, 1), n_subjects - 1)


def _rank(keys: list[str], seed: int) -> np.ndarray:
    """A keyed 8-byte BLAKE2b of each key; the keyed state is made once and
    copied per key (a key costs BLAKE2b one block of its own)."""
    keyed = hashlib.blake2b(digest_size=8, key=str(seed).encode())
    digests = []
    for k in keys:
        h = keyed.copy()
        h.update(k.encode())
        digests.append(int.from_bytes(h.digest(), "big"))
    return np.array(digests, dtype=np.uint64)


def assign(
    table: pa.Table, val_fraction: float, seed: int, val_subjects: int | None = None
) -> tuple[pa.Array, SplitCounts]:
    """The ``split`` column ("train"/"val") for `table`, and its counts.
    `val_subjects`, when given, is the number of validation subjects (at
    least one subject stays for training) instead of `n_val_subjects`."""
    if not 0 <= val_fraction < 1:
        raise ValueError(f"--val-fraction {val_fraction} must be at least 0 and below 1")
    counts = SplitCounts(val_fraction=val_fraction, seed=seed, val_subjects_asked=val_subjects)
    keys = subject_keys(table)
    unique = pc.unique(keys)
    names = unique.to_pylist()
    counts.subjects = len(names)
    if val_subjects is None:
        n_val = n_val_subjects(len(names), val_fraction)
    else:
        n_val = max(0, min(val_subjects, len(names) - 1))
    is_val_subject = np.zeros(len(names), bool)
    if n_val:
        ranks = _rank(names, seed)
        # ties (never in practice) broken by the key, so the order is total
        order = np.lexsort((np.array(names, dtype=object).astype(str), ranks))
        is_val_subject[order[:n_val]] = True
    row_val = pa.array(is_val_subject).take(pc.index_in(keys, value_set=unique))
    split = pc.if_else(row_val, "val", "train")
    counts.val_subjects, counts.train_subjects = n_val, len(names) - n_val
    counts.val_images = int(pc.sum(row_val).as_py() or 0)
    counts.train_images = table.num_rows - counts.val_images
    return split, counts
