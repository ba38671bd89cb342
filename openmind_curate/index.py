"""The image-index store: the one module that reads and writes ``images.parquet``.

Every stage goes through it, so no stage can damage what another added:

- **read** validates against `schema.IMAGE_INDEX`, upgrades an older index
  and refuses one from a newer version, and returns paths made absolute (or,
  for a reader that filters first, as stored: ``read(path, paths="stored")``);
- **write** is a read-modify-write under a file lock (``<index>.lock``),
  committed atomically (temporary name, then rename). Stages hand over only
  what they change: new rows (`add_rows`), new column values (`set_columns`),
  or a fresh crawl (`replace_crawl`), and the store merges it into the index
  as it is on disk at that moment, so two stages writing at once lose nothing;
- **paths are portable**: ``root``, ``anat_mask_path`` and ``anon_mask_path``
  are stored relative to the index file's folder (``path`` is relative to
  ``root``). Moving the whole tree, or mounting it under another prefix, keeps
  the index valid, and no stored path depends on where a command ran. The
  conversions are `openmind_curate.paths`'.

The re-crawl rule is generic: columns marked with a ``stage`` in the schema
(`schema.stage_columns`) and rows derived from an image (``derived_from``)
survive a re-crawl for every image whose file is unchanged (same size and
mtime), and are dropped, with a count, for a changed or removed image.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from filelock import FileLock, Timeout

from openmind_curate.atomic import atomic_path, remove_stale_temps
from openmind_curate.errors import DataError
from openmind_curate.ids import image_id
from openmind_curate.paths import PATH_COLUMNS, rebase_table
from openmind_curate.schema import IMAGE_INDEX, SchemaError, stage_columns, validate

if TYPE_CHECKING:  # pandas costs 0.2 s of every `curate` start-up; only read_frame needs it
    import pandas as pd

#: Version of the stored index; 1 had absolute (or working-folder) paths and no metadata.
INDEX_VERSION = 2
META_KEY = b"openmind_curate.index"
#: How long a writer waits for another stage to finish writing.
LOCK_TIMEOUT_S = 600.0


class IndexStoreError(DataError):
    """The index cannot be read or written; the message names the file and why."""


# --------------------------------------------------------------------- paths


def base_dir(index_path: str | os.PathLike[str]) -> str:
    """The folder stored paths are relative to (not resolved: a tree mounted
    through a symlink keeps its own prefix)."""
    return os.path.dirname(os.path.abspath(index_path))


def _with_column(table: pa.Table, name: str, values: pa.Array | pa.ChunkedArray) -> pa.Table:
    """`table` with column `name` replaced, its field (and metadata) kept."""
    i = table.column_names.index(name)
    return table.set_column(i, table.schema.field(i), values)


def stored_paths(table: pa.Table, index_path: str | os.PathLike[str], columns=PATH_COLUMNS):
    """`table` with its path columns made relative to the index's folder (a
    relative path is taken relative to the working folder)."""
    return rebase_table(table, os.getcwd(), base_dir(index_path), columns)


def absolute_paths(table: pa.Table, index_path: str | os.PathLike[str], columns=PATH_COLUMNS):
    """`table` with its stored path columns made absolute."""
    return rebase_table(table, base_dir(index_path), None, columns)


# ----------------------------------------------------------------------- read


def read(
    index_path: str | os.PathLike[str], *, paths: Literal["absolute", "stored"] = "absolute"
) -> pa.Table:
    """The index, validated, upgraded if older, with absolute paths.

    With ``paths="stored"`` the path columns are left as stored, relative to
    `base_dir` (index_path): the fast path for a reader that filters first
    and resolves only the rows it keeps (`paths.rebase_table`)."""
    path = Path(index_path)
    if path.is_dir():
        raise IndexStoreError(f"cannot read index {path}: a folder, not an index file")
    if not path.is_file():
        raise IndexStoreError(f"no index at {path} (run `curate crawl` first)")
    try:
        pf = pq.ParquetFile(path)
        meta = pf.schema_arrow.metadata or {}
        table = pf.read()
    except (OSError, pa.ArrowException) as exc:
        raise IndexStoreError(f"cannot read index {path}: not a parquet file ({exc})") from None
    version = _version(meta, path)
    if version > INDEX_VERSION:
        raise IndexStoreError(
            f"index {path} was written by a newer openmind-curate (index version {version}; "
            f"this version reads up to {INDEX_VERSION}): upgrade openmind-curate"
        )
    table = _add_missing_stage_columns(table)
    try:
        table = validate(table, IMAGE_INDEX)
    except SchemaError as exc:
        raise IndexStoreError(f"{path} is not an image index: {exc}") from None
    if version < 2:
        table = _upgrade_v1(table)
        return stored_paths(table, path) if paths == "stored" else table
    return table if paths == "stored" else absolute_paths(table, path)


def _add_missing_stage_columns(table: pa.Table) -> pa.Table:
    """An index written before a stage existed lacks that stage's columns: they
    are empty, as for an image the stage has not reached."""
    for name in stage_columns(IMAGE_INDEX):
        if name not in table.column_names:
            table = table.append_column(
                IMAGE_INDEX.field(name), pa.nulls(len(table), IMAGE_INDEX.field(name).type)
            )
    return table


def read_frame(index_path: str | os.PathLike[str]) -> pd.DataFrame:
    """`read` as a DataFrame (the form the stages iterate over)."""
    return read(index_path).to_pandas()


def _version(meta: dict[bytes, bytes], path: Path) -> int:
    raw = meta.get(META_KEY)
    if raw is None:
        return 1
    try:
        return int(json.loads(raw)["version"])
    except (ValueError, KeyError, TypeError):
        raise IndexStoreError(f"index {path}: unreadable store metadata {raw[:80]!r}") from None


def _upgrade_v1(table: pa.Table) -> pa.Table:
    """Version 1 stored absolute paths, except DWI map roots, which were
    relative to the folder `curate dwi` ran in (taken to be this one), and
    gave map rows ids that could not be recomputed: recompute them."""
    table = rebase_table(table, os.getcwd())
    ids = [
        image_id(d, p)
        for d, p in zip(
            table.column("dataset_id").to_pylist(), table.column("path").to_pylist(), strict=True
        )
    ]
    return _with_column(table, "image_id", pa.array(ids, pa.string()))


# ---------------------------------------------------------------------- write


@contextlib.contextmanager
def locked(index_path: str | os.PathLike[str], timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold the index's write lock (an OS lock, released if the holder dies)."""
    path = Path(index_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path) + ".lock")
    try:
        lock.acquire(timeout=timeout)
    except Timeout:
        raise IndexStoreError(
            f"index {path} is locked by another process for over {timeout:.0f} s "
            f"(lock file {path}.lock)"
        ) from None
    except (OSError, NotImplementedError) as exc:
        raise IndexStoreError(
            f"cannot lock index {path} ({exc}): put the index on a local or lock-capable "
            "file system"
        ) from None
    try:
        yield
    finally:
        lock.release()


def write(index_path: str | os.PathLike[str], table: pa.Table) -> pa.Table:
    """Validate `table` (absolute paths) and store it atomically. Call under `locked`."""
    table = validate(table, IMAGE_INDEX)
    ids = table.column("image_id")
    if pc.count_distinct(ids).as_py() != len(ids):
        counts = pc.value_counts(ids)
        dup = next(v["values"] for v in counts.to_pylist() if v["counts"] > 1)
        raise IndexStoreError(f"index {index_path}: image_id {dup} would appear twice")
    stored = stored_paths(table, index_path)
    meta = {META_KEY: json.dumps({"version": INDEX_VERSION, "paths": "relative to this folder"})}
    # Under the lock, a temporary file beside the index is a killed writer's.
    remove_stale_temps([Path(index_path)])
    with atomic_path(index_path) as tmp:
        pq.write_table(stored.replace_schema_metadata(meta), tmp)
        with open(tmp, "rb+") as fh:  # on disk before the rename, as atomic_write_bytes
            os.fsync(fh.fileno())
    return table


def update(
    index_path: str | os.PathLike[str],
    change: Callable[[pa.Table | None], pa.Table],
    after: Callable[[], None] | None = None,
) -> pa.Table:
    """Read-modify-write under the lock. `change` gets the current index (None
    if there is none) and returns the new one; `after` writes side files
    (the crawl's state) under the same lock, once the index is stored."""
    with locked(index_path):
        current = read(index_path) if Path(index_path).exists() else None
        table = write(index_path, change(current))
        if after is not None:
            after()
    return table


@dataclass
class RowsResult:
    added: int = 0  # new image_ids
    replaced: int = 0  # image_ids already present, now updated
    skipped: int = 0  # add_rows: source gone; set_columns: image gone or its file changed


def add_rows(index_path: str | os.PathLike[str], rows: pa.Table) -> RowsResult:
    """Add derived rows (or replace them, by image_id). A row whose
    ``derived_from`` is not in the index is skipped: its source was removed.
    A replaced row of an unchanged file keeps the stage columns it leaves
    empty (`carry_stage_columns`): re-adding DWI maps keeps their masks."""
    rows = validate(rows, IMAGE_INDEX)
    result = RowsResult()

    def change(current: pa.Table | None) -> pa.Table:
        if current is None:
            raise IndexStoreError(f"no index at {index_path} to add rows to")
        have = set(current.column("image_id").to_pylist())
        sources = rows.column("derived_from").to_pylist()
        keep = np.array([s is None or s in have for s in sources], bool)
        new = rows.filter(pa.array(keep))
        result.skipped = int((~keep).sum())
        new_ids = set(new.column("image_id").to_pylist())
        result.replaced = len(new_ids & have)
        result.added = len(new_ids) - result.replaced
        new, _ = carry_stage_columns(current, new)
        replaced = pa.array(sorted(new_ids), pa.string())
        stay = pc.invert(pc.is_in(current.column("image_id"), replaced))
        return pa.concat_tables([current.filter(stay), new])

    update(index_path, change)
    return result


def set_columns(
    index_path: str | os.PathLike[str],
    values: pd.DataFrame,
    guard: Sequence[str] = ("size_bytes", "mtime_ns"),
) -> RowsResult:
    """Set stage columns for the images in `values` (``image_id`` plus the columns).

    The `guard` columns, when `values` has them, must still match the index:
    a value computed from a file that has since changed (or been re-crawled
    as changed) is not written. Returns how many rows were set and skipped.
    """
    columns = [c for c in values.columns if c != "image_id" and c not in guard]
    unknown = [c for c in columns if c not in stage_columns(IMAGE_INDEX)]
    if unknown:
        # Only a stage column survives a re-crawl (the one rule): a stage that
        # needs a new column marks it with `stage=` in schema.IMAGE_INDEX.
        raise IndexStoreError(f"not stage columns of the index: {', '.join(unknown)}")
    checks = [c for c in guard if c in values.columns]
    by_id = {r["image_id"]: r for r in values.to_dict("records")}
    result = RowsResult()

    def change(current: pa.Table | None) -> pa.Table:
        if current is None:
            raise IndexStoreError(f"no index at {index_path} to update")
        ids = current.column("image_id").to_pylist()
        guard_cols = {c: current.column(c).to_pylist() for c in checks}
        hits = []
        for i, key in enumerate(ids):
            row = by_id.get(key)
            if row is not None and all(row[c] == guard_cols[c][i] for c in checks):
                hits.append((i, row))
        result.replaced, result.skipped = len(hits), len(by_id) - len(hits)
        table = current
        for name in columns:
            col = table.column(name).to_pylist()
            for i, row in hits:
                col[i] = _none_if_nan(row[name])
            table = _with_column(table, name, pa.array(col, IMAGE_INDEX.field(name).type))
        return table

    update(index_path, change)
    return result


def _none_if_nan(value: Any) -> Any:
    return None if isinstance(value, float) and np.isnan(value) else value


# -------------------------------------------------------------------- re-crawl


@dataclass
class CrawlMerge:
    """What a re-crawl did to what later stages had added."""

    kept: int = 0  # unchanged images whose stage columns were kept
    cleared: int = 0  # changed images whose stage columns were dropped
    removed: int = 0  # images no longer found
    derived_kept: int = 0
    derived_dropped: int = 0  # derived rows whose source changed or went away


def carry_stage_columns(old: pa.Table, new: pa.Table) -> tuple[pa.Table, np.ndarray]:
    """The one rule for what later stages added: a stage column
    (`schema.stage_columns`) that `new` leaves empty takes the value of the
    old row of the same image_id if its file is unchanged (same size and
    mtime). Returns `new` so filled and, per new row, the old row's position
    when the file is unchanged, else -1."""
    pos = {k: i for i, k in enumerate(old.column("image_id").to_pylist())}
    o_size, o_mtime = old.column("size_bytes").to_pylist(), old.column("mtime_ns").to_pylist()
    same = np.full(new.num_rows, -1, np.int64)
    for j, (key, size, mtime) in enumerate(
        zip(
            new.column("image_id").to_pylist(),
            new.column("size_bytes").to_pylist(),
            new.column("mtime_ns").to_pylist(),
            strict=True,
        )
    ):
        i = pos.get(key)
        if i is not None and o_size[i] == size and o_mtime[i] == mtime:
            same[j] = i
    indices = pa.array(same, pa.int64(), mask=same < 0)
    for name in stage_columns(IMAGE_INDEX):
        carried = pc.coalesce(new.column(name), old.column(name).take(indices))
        new = _with_column(new, name, carried)
    return new, same


def _has_stage_values(table: pa.Table) -> np.ndarray:
    has = np.zeros(table.num_rows, bool)
    for name in stage_columns(IMAGE_INDEX):
        if name != "derived_from":
            has |= pc.is_valid(table.column(name)).to_numpy(zero_copy_only=False)
    return has


def merge_crawl(old: pa.Table | None, new: pa.Table) -> tuple[pa.Table, CrawlMerge]:
    """The new crawl, plus what later stages added for its unchanged images
    (`carry_stage_columns`), plus the derived rows whose source (followed
    through chains of derivation) is still there and unchanged."""
    report = CrawlMerge()
    # The crawl owns no stage column: values in `new` (rows reused from an
    # index read before the lock) may be stale, the locked copy is not.
    for name in stage_columns(IMAGE_INDEX):
        new = _with_column(new, name, pa.nulls(new.num_rows, IMAGE_INDEX.field(name).type))
    if old is None or old.num_rows == 0:
        return new, report
    derived_mask = pc.is_valid(old.column("derived_from"))
    old_src, old_der = old.filter(pc.invert(derived_mask)), old.filter(derived_mask)
    new, same = carry_stage_columns(old_src, new)
    has = _has_stage_values(old_src)
    new_ids = new.column("image_id").to_pylist()
    kept_ids = {k for k, i in zip(new_ids, same, strict=True) if i >= 0}
    report.kept = int(has[same[same >= 0]].sum())
    old_ids = old_src.column("image_id").to_pylist()
    present = set(new_ids)
    changed = [i for i, k in enumerate(old_ids) if k in present and k not in kept_ids]
    report.cleared = int(has[changed].sum())
    report.removed = len(set(old_ids) - present)
    sources = old_der.column("derived_from").to_pylist()
    der_ids = old_der.column("image_id").to_pylist()
    keep = np.zeros(len(sources), bool)
    grew = True
    while grew:
        grew = False
        for k, src in enumerate(sources):
            if not keep[k] and src in kept_ids:
                keep[k] = grew = True
                kept_ids.add(der_ids[k])
    report.derived_kept, report.derived_dropped = int(keep.sum()), int((~keep).sum())
    return pa.concat_tables([new, old_der.filter(pa.array(keep))]), report


def replace_crawl(
    index_path: str | os.PathLike[str], new: pa.Table, after: Callable[[], None] | None = None
) -> tuple[pa.Table, CrawlMerge]:
    """Store a fresh crawl, merged (`merge_crawl`) with the index as it is on
    disk under the lock; `after` writes the crawl's side files under it too."""
    report = CrawlMerge()

    def change(current: pa.Table | None) -> pa.Table:
        nonlocal report
        merged, report = merge_crawl(current, new)
        return merged

    return update(index_path, change, after), report
