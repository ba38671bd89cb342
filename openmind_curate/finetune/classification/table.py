"""The classification table: which image, which label, which subject.

A table (parquet or CSV) lists the images by ``path`` (absolute, or relative
to the table's folder; an index's ``root`` + ``path`` when both are there) or
by ``image_id`` of an index (``--index``), with a label column. The subject
decides the folds (the folds never share one): ``dataset_id`` + ``subject``
when the table (or the index) has them, ``subject`` alone, else the BIDS
``sub-<label>`` folder in the path with the folder above it as the dataset,
else the image itself (each its own subject, and the run says so).

Bad rows are dropped with a message naming the row and the problem (no
label, an image_id the index lacks), and the rest goes on.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from openmind_curate.errors import InputError

#: The columns `read_table` returns.
COLUMNS = ("case_id", "path", "label", "subject")
#: A class needs this many subjects for every one of the five folds to hold it.
MIN_SUBJECTS = 5
_BIDS_SUBJECT = re.compile(r"(?:^|/)([^/]+)/(sub-[A-Za-z0-9]+)(?:/|$)")


@dataclass
class Table:
    """The cases to classify (`COLUMNS`), the class names in label order,
    and what was dropped or assumed on the way."""

    cases: pd.DataFrame
    classes: list[str]
    notes: list[str] = field(default_factory=list)


def _read_any(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise InputError(f"--data {path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            return pd.read_parquet(path)
        if suffix in (".csv", ".tsv"):
            return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
    except Exception as exc:  # noqa: BLE001 - any parse failure is the file's problem
        raise InputError(f"--data {path}: cannot read it ({exc})") from None
    raise InputError(f"--data {path}: give a .parquet, .csv or .tsv table")


def _join_index(frame: pd.DataFrame, index: Path | None, table: Path) -> pd.DataFrame:
    """Rows by image_id get their path (and dataset, subject) from the index."""
    if index is None or not Path(index).is_file():
        where = "no index was given" if index is None else f"the index {index} does not exist"
        raise InputError(
            f"--data {table}: it lists image_id without a path column, and {where}; "
            "give the index they come from with --index"
        )
    from openmind_curate import index as store

    idx = store.read(index).to_pandas()
    keep = [c for c in ("image_id", "root", "path", "dataset_id", "subject") if c in idx]
    own = [c for c in frame.columns if c not in keep or c == "image_id"]
    return frame[own].merge(idx[keep], on="image_id", how="left")


def _paths(frame: pd.DataFrame, table: Path) -> pd.Series:
    if "root" in frame:
        joined = [
            str(Path(r) / p) if isinstance(r, str) and isinstance(p, str) else p
            for r, p in zip(frame["root"], frame["path"], strict=True)
        ]
        return pd.Series(joined, index=frame.index, dtype=object)
    base = table.resolve().parent
    return frame["path"].map(lambda p: str(base / p) if isinstance(p, str) else p)


def subject_of(path: str) -> str | None:
    """``dataset/sub-X`` from a BIDS path (the folder above ``sub-X`` names
    the dataset), or None when the path has no ``sub-`` folder."""
    found = _BIDS_SUBJECT.findall(Path(path).as_posix())
    if not found:
        return None
    dataset, subject = found[-1]
    return f"{dataset}/{subject}"


def _subjects(frame: pd.DataFrame, notes: list[str]) -> pd.Series:
    if "subject" in frame and frame["subject"].notna().all():
        subject = frame["subject"].astype(str)
        if "dataset_id" in frame:
            return frame["dataset_id"].astype(str) + "/sub-" + subject.str.removeprefix("sub-")
        return subject
    parsed = frame["path"].map(subject_of)
    alone = parsed.isna()
    if alone.any():
        notes.append(
            f"{int(alone.sum())} image(s) name no subject (no subject column, no sub- folder "
            "in the path): each is taken as its own subject"
        )
    return parsed.where(~alone, frame["case_id"])


def _case_ids(frame: pd.DataFrame) -> pd.Series:
    if "image_id" in frame:
        return frame["image_id"].astype(str)
    return frame["path"].map(lambda p: hashlib.sha1(p.encode()).hexdigest()[:16])


def _drop(frame: pd.DataFrame, bad: pd.Series, why: str, notes: list[str]) -> pd.DataFrame:
    if bad.any():
        rows = ", ".join(str(i) for i in frame.index[bad][:5])
        more = "" if bad.sum() <= 5 else f" and {int(bad.sum()) - 5} more"
        notes.append(f"dropped {int(bad.sum())} row(s) {why}: row {rows}{more}")
    return frame[~bad]


def read_table(path: Path, label: str, index: Path | None = None) -> Table:
    """The cases of `path` labelled by column `label` (see the module doc)."""
    path = Path(path)
    frame = _read_any(path)
    notes: list[str] = []
    if label not in frame:
        raise InputError(
            f"--label {label}: {path} has no such column (it has: {', '.join(map(str, frame))})"
        )
    if label != "label":  # the chosen column becomes "label"; a column of that name goes
        frame = frame.drop(columns=["label"], errors="ignore").rename(columns={label: "label"})
    frame = frame.reset_index(drop=True)
    if "path" not in frame:
        if "image_id" not in frame:
            raise InputError(f"--data {path}: it needs a path or an image_id column")
        frame = _join_index(frame, index, path)
        frame = _drop(frame, frame["path"].isna(), "whose image_id is not in the index", notes)
    bad_path = ~frame["path"].map(lambda p: isinstance(p, str) and bool(p.strip()))
    frame = _drop(frame, bad_path, "without a path", notes)
    frame = _drop(frame, frame["label"].isna(), "without a label", notes)
    if frame.empty:
        raise InputError(f"--data {path}: no row has both an image and a label")
    frame = frame.assign(path=_paths(frame, path))
    frame = frame.assign(case_id=_case_ids(frame))
    dup = frame["case_id"].duplicated()
    if dup.any():
        raise InputError(f"--data {path}: image {frame['path'][dup].iloc[0]} is listed twice")
    frame = frame.assign(label=frame["label"].astype(str))
    frame = frame.assign(subject=_subjects(frame, notes))
    classes = sorted(frame["label"].unique())
    if len(classes) < 2:
        raise InputError(f"--label {label}: {path} has {len(classes)} class(es); give 2 or more")
    per_class = frame.groupby("label")["subject"].nunique()
    few = per_class[per_class < MIN_SUBJECTS]
    if len(few):
        listed = ", ".join(f"{k} ({v})" for k, v in few.items())
        notes.append(
            f"class(es) with fewer than {MIN_SUBJECTS} subjects: {listed}; some of the five "
            "held-out folds will lack them (average precision leaves such a class out there)"
        )
    return Table(frame[list(COLUMNS)].reset_index(drop=True), classes, notes)
