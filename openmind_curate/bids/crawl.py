"""The crawler: BIDS roots -> the image index (one row per image).

Per dataset (one batch item each, so datasets crawl in parallel on a local
pool or Dask): walk the tree once with ``os.scandir``, parse every name, index
the metadata files for inheritance, read participants and sessions tables, read
each image's NIfTI header (first gzip block only), and build the rows.

Incremental re-crawl: each dataset's fingerprint (its file list with sizes and
mtimes) is stored beside the index. An unchanged dataset is not re-read; in a
changed one, only images whose size or mtime changed get their header re-read
(sidecars and participants are cheap and always re-derived, since a change to
a top-level file can change every row).

Problems (malformed JSON, bad TSV, duplicate participants, unreadable files,
bad headers, bval/bvec mismatches) become rows of a problems table and never
stop the crawl.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from openmind_curate import index as store
from openmind_curate.atomic import atomic_path, atomic_write_text
from openmind_curate.bids.entities import ENTITY_NAMES, BidsName, parse_name
from openmind_curate.bids.modalities import modality_of
from openmind_curate.bids.nifti import HeaderInfo, read_header
from openmind_curate.bids.participants import Person, extra_json, overlay, read_people
from openmind_curate.bids.sidecars import Inheritance, load_json, merge
from openmind_curate.errors import InputError
from openmind_curate.ids import dataset_ids, image_id
from openmind_curate.index import CrawlMerge
from openmind_curate.jobs import JobOptions, run_batch
from openmind_curate.paths import absolute_path, stored_path
from openmind_curate.schema import IMAGE_INDEX, PROBLEMS, rows_to_table, validate

DEFAULT_DATATYPES = ("anat", "dwi", "pet")
SKIP_DIRS = frozenset({"sourcedata", "code", "stimuli", "derivatives", "phenotype"})
STATE_VERSION = 2  # 2: roots relative to the index's folder
_HEADER_FIELDS = ("header_status", "shape", "spacing", "n_volumes", "dtype")


@dataclass(frozen=True)
class DatasetRef:
    root: str
    dataset_id: str
    is_derivative: bool = False

    def __str__(self) -> str:
        return self.root


@dataclass(frozen=True)
class CrawlOptions:
    derivatives: bool = False
    datatypes: tuple[str, ...] = DEFAULT_DATATYPES


@dataclass
class DatasetJob:
    ref: DatasetRef
    options: CrawlOptions
    previous_fingerprint: str | None = None
    previous_headers: dict[str, tuple] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.ref.root


@dataclass
class DatasetResult:
    ref: DatasetRef
    fingerprint: str
    unchanged: bool
    index: pa.Table | None = None
    problems: list[dict[str, Any]] = field(default_factory=list)
    n_headers_read: int = 0


# --------------------------------------------------------------------- discovery


def is_dataset(path: Path) -> bool:
    if (path / "dataset_description.json").is_file():
        return True
    try:
        return any(e.is_dir() and e.name.startswith("sub-") for e in os.scandir(path))
    except OSError:
        return False


def _skip_dir(name: str) -> bool:
    return name.startswith(".") or name in SKIP_DIRS


def find_datasets(roots: Sequence[str | os.PathLike[str]], derivatives: bool) -> list[DatasetRef]:
    """Datasets under the given roots (a root may itself be a dataset).

    A dataset's id is its folder name. Where several datasets share a name,
    each gets a suffix from its own location (`ids.dataset_ids`), so no id
    depends on the order of the roots or of the crawl.
    """
    found: list[tuple[str, str, int | None, str]] = []  # path, crawl root, parent, suffix

    def visit(path: Path, root: str, depth: int) -> None:
        if is_dataset(path):
            found.append((os.path.abspath(path), root, None, ""))
            if derivatives:
                visit_derivatives(path / "derivatives", len(found) - 1)
            return
        if depth >= 3:
            return
        try:
            children = sorted(e.name for e in os.scandir(path) if e.is_dir())
        except OSError:
            return
        for name in children:
            if not _skip_dir(name):
                visit(path / name, root, depth + 1)

    def visit_derivatives(path: Path, parent: int) -> None:
        if not path.is_dir():
            return
        root = found[parent][1]
        if any(e.name.startswith("sub-") for e in os.scandir(path) if e.is_dir()):
            found.append((os.path.abspath(path), root, parent, "/derivatives"))
            return
        for e in sorted(os.scandir(path), key=lambda e: e.name):
            if e.is_dir() and not e.name.startswith(".") and is_dataset(Path(e.path)):
                found.append((os.path.abspath(e.path), root, parent, f"/derivatives/{e.name}"))

    for root in roots:
        visit(Path(root), os.path.abspath(root), 0)
    first: dict[str, int] = {}  # the same folder reached from two roots counts once
    for k, (path, *_) in enumerate(found):
        first.setdefault(path, k)
    top = [k for k in first.values() if found[k][2] is None]
    top_ids = dict(zip(top, dataset_ids([found[k][:2] for k in top]), strict=True))
    refs = []
    for k in first.values():
        path, _, parent, suffix = found[k]
        dataset_id = top_ids[k] if parent is None else top_ids[parent] + suffix
        refs.append(DatasetRef(path, dataset_id, parent is not None))
    return refs


# ------------------------------------------------------------------------ walking


@dataclass(frozen=True)
class Entry:
    rel: str
    size: int
    mtime_ns: int
    broken_link: bool = False


def walk_dataset(root: str) -> tuple[list[Entry], list[tuple[str, str, str]]]:
    """Top-level files and everything under ``sub-*``; problems as (path, kind, msg)."""
    entries: list[Entry] = []
    problems: list[tuple[str, str, str]] = []

    def scan(folder: str, rel: str, top: bool) -> None:
        try:
            it = os.scandir(folder)
        except PermissionError:
            problems.append((rel or ".", "unreadable", "permission denied on folder"))
            return
        except OSError as exc:
            problems.append((rel or ".", "unreadable", f"cannot list folder: {exc}"))
            return
        with it:
            for e in it:
                name = e.name
                child = f"{rel}/{name}" if rel else name
                if e.is_dir():
                    if name.startswith(".") or (top and not name.startswith("sub-")):
                        continue
                    if not _skip_dir(name):
                        scan(e.path, child, False)
                    continue
                try:
                    st = e.stat()
                    entries.append(Entry(child, st.st_size, st.st_mtime_ns))
                except FileNotFoundError:  # a symlink whose target is absent
                    lst = e.stat(follow_symlinks=False)
                    entries.append(Entry(child, 0, lst.st_mtime_ns, broken_link=True))
                except OSError as exc:
                    problems.append((child, "unreadable", f"cannot stat: {exc}"))

    scan(root, "", True)
    entries.sort(key=lambda e: e.rel)
    return entries, problems


def fingerprint(entries: list[Entry]) -> str:
    h = hashlib.sha1()
    for e in entries:
        h.update(f"{e.rel}\t{e.size}\t{e.mtime_ns}\t{e.broken_link}\n".encode())
    return h.hexdigest()


# ----------------------------------------------------------------------- metadata


def _snapshot_tag(root: str) -> str | None:
    """The OpenNeuro snapshot: recorded by `curate fetch`, else the dataset DOI."""
    doc, _ = load_json(os.path.join(root, ".openmind", "fetch.json"))
    if doc and doc.get("tag"):
        return str(doc["tag"])
    desc, _ = load_json(os.path.join(root, "dataset_description.json"))
    doi = str((desc or {}).get("DatasetDOI") or "")
    if "openneuro" in doi and ".v" in doi:
        return doi.rsplit(".v", 1)[1]
    return None


def _float(value: Any) -> float | None:
    if isinstance(value, list) and value:
        value = value[0]
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


class _Metadata:
    """Per-dataset caches: parsed sidecars, participants, sessions tables."""

    def __init__(self, root: str, ref: DatasetRef, problems: list[dict[str, Any]]):
        self.root, self.ref, self.problems = root, ref, problems
        self._json: dict[str, dict[str, Any]] = {}
        self._lines: dict[str, int | None] = {}
        self._sessions: dict[str, dict[str, Person]] = {}
        self.people: dict[str, Person] = {}
        tsv = os.path.join(root, "participants.tsv")
        if os.path.isfile(tsv):
            dictionary = os.path.join(root, "participants.json")
            people, probs = read_people(
                tsv, dictionary if os.path.isfile(dictionary) else None, "participant_id", "sub-"
            )
            self.people = people
            for path, kind, msg in probs:
                self.problem(os.path.relpath(path, root), kind, msg)

    def problem(self, rel: str, kind: str, message: str) -> None:
        self.problems.append(
            dict(
                dataset_id=self.ref.dataset_id,
                root=self.ref.root,
                path=rel,
                kind=kind,
                message=message,
            )
        )

    def document(self, rel: str) -> dict[str, Any]:
        if rel not in self._json:
            doc, problem = load_json(os.path.join(self.root, rel))
            if problem:
                self.problem(rel, *problem)
            self._json[rel] = doc or {}
        return self._json[rel]

    def n_values(self, rel: str) -> int | None:
        if rel not in self._lines:
            try:
                with open(os.path.join(self.root, rel)) as fh:
                    self._lines[rel] = len(fh.readline().split())
            except (OSError, UnicodeDecodeError) as exc:
                self.problem(rel, "unreadable", f"cannot read: {exc}")
                self._lines[rel] = None
        return self._lines[rel]

    def person(self, subject: str, session: str | None) -> Person | None:
        base = self.people.get(subject)
        if session is None:
            return base
        if subject not in self._sessions:
            rel = f"sub-{subject}/sub-{subject}_sessions.tsv"
            path = os.path.join(self.root, rel)
            table: dict[str, Person] = {}
            if os.path.isfile(path):
                table, probs = read_people(path, None, "session_id", "ses-")
                for _, kind, msg in probs:
                    self.problem(rel, kind, msg)
            self._sessions[subject] = table
        per_session = self._sessions[subject].get(session)
        if per_session is None:
            return base
        return overlay(base or Person(), per_session)


# -------------------------------------------------------------------------- rows


def _header(entry: Entry, path: str, previous: dict[str, tuple]) -> tuple[HeaderInfo, bool]:
    """(header, freshly read?) — reuse the previous crawl's when size and mtime match."""
    prev = previous.get(entry.rel)
    if prev is not None and prev[0] == entry.size and prev[1] == entry.mtime_ns:
        status, shape, spacing, n_volumes, dtype = prev[2:]
        return HeaderInfo(status, None, shape, spacing, n_volumes, dtype), False
    if entry.broken_link:
        return HeaderInfo("missing", "broken symbolic link (annexed file not fetched?)"), True
    return read_header(path, entry.size), True


def crawl_dataset(job: DatasetJob) -> DatasetResult:
    """Crawl one dataset (the batch item)."""
    ref, root = job.ref, job.ref.root
    entries, walk_problems = walk_dataset(root)
    fp = fingerprint(entries)
    if job.previous_fingerprint == fp:
        return DatasetResult(ref, fp, unchanged=True)
    problems: list[dict[str, Any]] = []
    meta = _Metadata(root, ref, problems)
    for rel, kind, msg in walk_problems:
        meta.problem(rel, kind, msg)
    names: list[tuple[Entry, BidsName]] = []
    for e in entries:
        name = parse_name(posixpath.basename(e.rel))
        if name is not None:
            names.append((e, name))
    inherit = Inheritance((e.rel, n) for e, n in names)
    tag = _snapshot_tag(root)
    rows, n_read = [], 0
    datatypes = set(job.options.datatypes)
    for entry, name in names:
        if not name.is_nifti:
            continue
        parts = entry.rel.split("/")
        datatype = parts[-2] if len(parts) >= 3 else None
        if datatype not in datatypes:
            continue
        modality, flags = modality_of(name.suffix, name.entities)
        if modality is None:
            continue
        header, fresh = _header(entry, os.path.join(root, entry.rel), job.previous_headers)
        n_read += fresh
        if fresh and header.status != "ok":
            meta.problem(entry.rel, "header", f"{header.status}: {header.message}")
        rows.append(_row(ref, entry, name, datatype, modality, flags, header, inherit, meta, tag))
    index = rows_to_table(rows, IMAGE_INDEX, check_values=False)  # checked once, in crawl()
    return DatasetResult(ref, fp, False, index, problems, n_read)


def _row(ref, entry, name, datatype, modality, flags, header, inherit, meta, tag) -> dict:
    ents = name.entities
    sidecar_files = inherit.applicable(entry.rel, name, ".json")
    sidecar = merge(meta.document(r) for r in sidecar_files)
    subject = ents.get("sub", "")
    person = meta.person(subject, ents.get("ses"))
    row: dict[str, Any] = {ENTITY_NAMES[k]: v for k, v in ents.items() if k in ENTITY_NAMES}
    row.update(
        image_id=image_id(ref.dataset_id, entry.rel),
        dataset_id=ref.dataset_id,
        subject=subject,
        entities=json.dumps(ents),
        datatype=datatype,
        suffix=name.suffix,
        extension=name.extension,
        modality=modality,
        is_derivative=ref.is_derivative,
        flags=",".join(flags) or None,
        root=ref.root,
        path=entry.rel,
        size_bytes=entry.size,
        mtime_ns=entry.mtime_ns,
        header_status=header.status,
        shape=header.shape,
        spacing=header.spacing,
        n_volumes=header.n_volumes,
        dtype=header.dtype,
        sidecar=json.dumps(sidecar, sort_keys=True, ensure_ascii=False) if sidecar else None,
        manufacturer=_str(sidecar.get("Manufacturer")),
        model_name=_str(sidecar.get("ManufacturersModelName")),
        magnetic_field_strength=_float(sidecar.get("MagneticFieldStrength")),
        repetition_time=_float(sidecar.get("RepetitionTime")),
        echo_time=_float(sidecar.get("EchoTime")),
        phase_encoding_direction=_str(sidecar.get("PhaseEncodingDirection")),
        snapshot_tag=tag,
    )
    if modality == "DWI":
        for ext in (".bval", ".bvec"):
            found = inherit.nearest(entry.rel, name, ext)
            row[f"{ext[1:]}_path"] = found
            if found is None:
                meta.problem(entry.rel, "dwi", f"no {ext} file applies to this series")
            elif header.n_volumes and (n := meta.n_values(found)) is not None:
                if n != header.n_volumes:
                    meta.problem(
                        entry.rel,
                        "dwi",
                        f"{found} has {n} entries, the image has {header.n_volumes} volumes",
                    )
    if person is not None:
        row.update(
            age=person.age,
            age_raw=person.age_raw,
            sex=person.sex,
            handedness=person.handedness,
            race=person.race,
            weight=person.weight,
            bmi=person.bmi,
            health_status=person.health_status,
            participant_extra=extra_json(person),
        )
    return row


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


# --------------------------------------------------------------------- the crawl


class NoDatasetsError(InputError):
    """The roots hold no BIDS dataset: nothing is written."""


@dataclass
class CrawlResult:
    index: pa.Table  # the whole index after the crawl (absolute paths)
    problems: pa.Table
    n_datasets: int
    n_unchanged: int
    n_headers_read: int
    failures: list[str]
    seconds: float = 0.0
    merge: CrawlMerge = field(default_factory=CrawlMerge)
    n_images: int = 0  # images the crawl found (the index may hold derived rows too)


def state_path(out: Path) -> Path:
    return out.with_name(out.name.removesuffix(".parquet") + ".crawl.json")


def problems_path(out: Path) -> Path:
    return out.with_name(out.name.removesuffix(".parquet") + ".problems.parquet")


def _load_previous(
    out: Path, options: CrawlOptions
) -> tuple[dict, pa.Table | None, pa.Table | None]:
    """The previous crawl's state (keyed by absolute root), index and problems.

    The index is read through the store (a bad one raises); a missing or
    mismatched state only costs a full re-read of the headers.
    """
    index = store.read(out) if out.exists() else None
    state_file = state_path(out)
    if index is None or not state_file.exists():
        return {}, index, None
    try:
        state = json.loads(state_file.read_text())
        if state.get("version") != STATE_VERSION or state.get("options") != _options_doc(options):
            return {}, index, None
        probs = None
        if problems_path(out).exists():
            probs = validate(pq.read_table(problems_path(out)), PROBLEMS)
            probs = store.absolute_paths(probs, out, ["root"])
    except (OSError, ValueError, pa.ArrowException):  # SchemaError is a ValueError
        return {}, index, None
    base = store.base_dir(out)
    datasets = {absolute_path(k, base): v for k, v in state.get("datasets", {}).items()}
    return datasets, index, probs


def _options_doc(options: CrawlOptions) -> dict[str, Any]:
    return {"derivatives": options.derivatives, "datatypes": list(options.datatypes)}


def crawl(
    roots: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    options: CrawlOptions = CrawlOptions(),
    jobs: JobOptions = JobOptions(description="crawl"),
) -> CrawlResult:
    """Crawl `roots` into the index at `out` (parquet), reusing a previous crawl.

    The rows go into the index through the store (`openmind_curate.index`),
    which keeps what later stages added for unchanged images.
    """
    start = time.perf_counter()
    out = Path(out)
    refs = find_datasets(roots, options.derivatives)
    if not refs:
        raise NoDatasetsError(
            f"no BIDS dataset under {', '.join(map(str, roots))}: no folder with a "
            "dataset_description.json or sub-* folders (up to 3 levels down); is this a BIDS "
            "dataset or a folder of them?"
        )
    state, prev_index, prev_problems = _load_previous(out, options)
    by_root = _split_by_root(prev_index)
    work = []
    for ref in refs:
        prev = state.get(ref.root) or {}
        # Reuse a dataset's rows only under the same id: a new duplicate name
        # elsewhere renames it, and its rows must carry the new id.
        same_id = prev.get("dataset_id") == ref.dataset_id
        headers = _previous_headers(by_root.get(ref.root))  # headers do not depend on ids
        work.append(DatasetJob(ref, options, prev.get("fingerprint") if same_id else None, headers))
    batch = run_batch(crawl_dataset, work, jobs)

    tables, problems, new_state, unchanged, n_read = [], [], {}, 0, 0
    prev_probs_by_root = _split_by_root(prev_problems)
    for job, res in zip(work, batch.results, strict=True):
        if res.status != "done":
            problems.append(
                dict(
                    dataset_id=job.ref.dataset_id,
                    root=job.ref.root,
                    path=".",
                    kind="crawl_failed",
                    message=res.error,
                )
            )
            continue
        r: DatasetResult = res.value
        new_state[job.ref.root] = {"fingerprint": r.fingerprint, "dataset_id": job.ref.dataset_id}
        if r.unchanged:
            unchanged += 1
            if (t := by_root.get(job.ref.root)) is not None:
                tables.append(t)
            if (p := prev_probs_by_root.get(job.ref.root)) is not None:
                problems += p.to_pylist()
            continue
        n_read += r.n_headers_read
        tables.append(r.index)
        problems += r.problems
    crawled = validate(pa.concat_tables(tables), IMAGE_INDEX) if tables else None
    if crawled is None:
        crawled = IMAGE_INDEX.empty_table()
    problem_table = rows_to_table(problems, PROBLEMS)
    result = CrawlResult(
        prev_index,
        problem_table,
        len(refs),
        unchanged,
        n_read,
        [f.label for f in batch.failed],
        n_images=crawled.num_rows,
    )
    same = unchanged == len(refs) and len(refs) == len(state) and not batch.failed
    if not same or prev_index is None:
        doc = {"version": STATE_VERSION, "options": _options_doc(options), "datasets": new_state}
        result.index, result.merge = store.replace_crawl(
            out, crawled, after=lambda: _write_side_files(out, problem_table, doc)
        )
    result.seconds = time.perf_counter() - start
    return result


def _split_by_root(table: pa.Table | None) -> dict[str, pa.Table]:
    """Rows per dataset root; derived rows (another stage's) are not the crawl's."""
    if table is None or table.num_rows == 0:
        return {}
    if "derived_from" in table.column_names:
        table = table.filter(pc.is_null(table.column("derived_from")))
    roots = table.column("root")
    return {r: table.filter(pc.equal(roots, r)) for r in pc.unique(roots).to_pylist()}


def _previous_headers(table: pa.Table | None) -> dict[str, tuple]:
    if table is None:
        return {}
    cols = table.select(["path", "size_bytes", "mtime_ns", *_HEADER_FIELDS]).to_pydict()
    return {
        path: (
            cols["size_bytes"][i],
            cols["mtime_ns"][i],
            *[cols[f][i] for f in _HEADER_FIELDS],
        )
        for i, path in enumerate(cols["path"])
    }


def _write_side_files(out: Path, problems: pa.Table, state: dict[str, Any]) -> None:
    """Problems and crawl state, paths relative to the index's folder like the index's."""
    with atomic_path(problems_path(out)) as tmp:
        pq.write_table(store.stored_paths(problems, out, ["root"]), tmp)
    base = store.base_dir(out)
    state = {
        **state,
        "datasets": {stored_path(k, base): v for k, v in state["datasets"].items()},
    }
    # The state goes last: if the job dies before it, the next run re-crawls.
    atomic_write_text(state_path(out), json.dumps(state, indent=1))
