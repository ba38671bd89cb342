"""Download OpenNeuro datasets, only the datatypes we index, resumably.

The file list (names, sizes, URLs) of one pinned snapshot comes from
OpenNeuro's GraphQL API. We select the top-level metadata (description,
participants, top-level sidecars and gradient tables), subject- and
session-level metadata files, and the chosen datatype folders; the actual
transfer is openneuro-py's `download` with exactly those files as its
include list. Files already present with the right size are not requested
again, so an interrupted fetch resumes. The pinned tag is written to
``DEST/DSID/.openmind/fetch.json``, which the crawler reads into the index's
``snapshot_tag``; fetching a different tag into the same folder is refused.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import Any

import openneuro
import requests

from openmind_curate.atomic import atomic_write_text
from openmind_curate.errors import RemoteError

GRAPHQL_URL = "https://openneuro.org/crn/graphql"
RECORD = ".openmind/fetch.json"

_FILES = "files(recursive: true) { id filename size urls directory }"
SNAPSHOT_QUERY = Template(
    'query { snapshot(datasetId: "$dataset", tag: "$tag") { id tag ' + _FILES + " } }"
)
LATEST_QUERY = Template(
    'query { dataset(id: "$dataset") { id latestSnapshot { id tag ' + _FILES + " } } }"
)
_METADATA_EXT = (".json", ".tsv", ".bval", ".bvec")
_TOP_LEVEL_NAMES = ("README", "CHANGES", "LICENSE")


class FetchError(RemoteError):
    """The API refused or the data could not be fetched; the message says which dataset."""


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int
    urls: tuple[str, ...] = ()


@dataclass(frozen=True)
class Snapshot:
    dataset: str
    tag: str
    files: tuple[RemoteFile, ...]


@dataclass
class FetchPlan:
    snapshot: Snapshot
    wanted: list[RemoteFile]
    present: list[RemoteFile]
    todo: list[RemoteFile]

    @property
    def bytes_todo(self) -> int:
        return sum(f.size for f in self.todo)


@dataclass
class FetchResult:
    plan: FetchPlan
    dest: Path
    missing_after: list[RemoteFile] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.missing_after


def parse_dataset_arg(arg: str, tag: str | None) -> tuple[str, str | None]:
    """``ds000117`` or ``ds000117:1.0.5`` -> (id, tag)."""
    dataset, _, pinned = arg.partition(":")
    return dataset.strip(), (pinned.strip() or tag)


def parse_snapshot(dataset: str, payload: dict[str, Any]) -> Snapshot:
    """The GraphQL response -> Snapshot, with errors turned into FetchError."""
    if payload.get("errors"):
        msgs = "; ".join(str(e.get("message", e)) for e in payload["errors"])
        raise FetchError(f"{dataset}: OpenNeuro API error: {msgs}")
    data = payload.get("data") or {}
    snap = data.get("snapshot")
    if snap is None and data.get("dataset") is not None:
        snap = data["dataset"].get("latestSnapshot")
    if not snap:
        raise FetchError(f"{dataset}: no such dataset or snapshot on OpenNeuro")
    tag = snap.get("tag") or str(snap.get("id", "")).partition(":")[2]
    files = tuple(
        RemoteFile(f["filename"], int(f.get("size") or 0), tuple(f.get("urls") or ()))
        for f in snap.get("files") or ()
        if not f.get("directory")
    )
    return Snapshot(dataset, tag, files)


def query_snapshot(
    dataset: str, tag: str | None, *, session: Any = None, timeout: float = 30.0
) -> Snapshot:
    """Ask OpenNeuro for the file list of `tag` (the latest snapshot when None)."""
    http = session or requests
    query = (SNAPSHOT_QUERY if tag else LATEST_QUERY).substitute(dataset=dataset, tag=tag or "")
    try:
        resp = http.post(GRAPHQL_URL, json={"query": query}, timeout=timeout)
    except requests.RequestException as exc:
        raise FetchError(f"{dataset}: cannot reach OpenNeuro: {exc}") from None
    if resp.status_code != 200:
        raise FetchError(f"{dataset}: OpenNeuro answered HTTP {resp.status_code}")
    try:
        payload = resp.json()
    except ValueError:
        raise FetchError(f"{dataset}: OpenNeuro answered with something that is not JSON") from None
    return parse_snapshot(dataset, payload)


def wanted(path: str, datatypes: Sequence[str]) -> bool:
    """Top-level and subject/session metadata, plus the chosen datatype folders."""
    parts = path.split("/")
    name = parts[-1]
    if name.startswith("."):
        return False
    if len(parts) == 1:
        return name.endswith(_METADATA_EXT) or name.startswith(_TOP_LEVEL_NAMES)
    if not parts[0].startswith("sub-"):
        return False  # sourcedata, derivatives, code, stimuli, phenotype ...
    folders = parts[1:-1]
    if not folders or (len(folders) == 1 and folders[0].startswith("ses-")):
        return name.endswith(_METADATA_EXT)  # sessions.tsv, subject-level sidecars
    return folders[-1] in datatypes


def plan_fetch(snapshot: Snapshot, dest: Path, datatypes: Sequence[str]) -> FetchPlan:
    """What to download: the wanted files not already complete on disk (resume)."""
    root = dest / snapshot.dataset
    chosen = [f for f in snapshot.files if wanted(f.path, datatypes)]
    present, todo = [], []
    for f in chosen:
        local = root / f.path
        complete = local.is_file() and local.stat().st_size == f.size
        (present if complete else todo).append(f)
    return FetchPlan(snapshot, chosen, present, todo)


def check_record(root: Path, tag: str) -> None:
    record = root / RECORD
    if record.exists():
        previous = json.loads(record.read_text()).get("tag")
        if previous and previous != tag:
            raise FetchError(
                f"{root} holds snapshot {previous} of {root.name}; refusing to mix in {tag}. "
                "Use another --dest or remove the folder."
            )


def fetch(
    dataset: str,
    dest: str | Path,
    *,
    tag: str | None = None,
    datatypes: Sequence[str] = ("anat", "dwi"),
    dry_run: bool = False,
    session: Any = None,
    downloader: Callable[..., Any] | None = None,
) -> FetchResult:
    """Fetch (or with `dry_run`, only plan) one dataset into ``dest/dataset``."""
    dest = Path(dest)
    snapshot = query_snapshot(dataset, tag, session=session)
    root = dest / dataset
    check_record(root, snapshot.tag)
    plan = plan_fetch(snapshot, dest, datatypes)
    result = FetchResult(plan, root)
    if dry_run:
        return result
    record = {
        "dataset": dataset,
        "tag": snapshot.tag,
        "datatypes": list(datatypes),
        "complete": False,
    }
    atomic_write_text(root / RECORD, json.dumps(record, indent=1))
    if plan.todo:
        if downloader is None:
            downloader = openneuro.download
        downloader(
            dataset=dataset,
            tag=snapshot.tag,
            target_dir=str(root),
            # A leading "/" anchors each pattern at the dataset root.
            include=sorted("/" + f.path for f in plan.todo),
        )
    result.missing_after = plan_fetch(snapshot, dest, datatypes).todo
    record["complete"] = result.complete
    atomic_write_text(root / RECORD, json.dumps(record, indent=1))
    return result


def datatype_of(path: str) -> str:
    parts = path.split("/")
    return parts[-2] if len(parts) > 2 and not parts[-2].startswith(("sub-", "ses-")) else "meta"


def dry_run_table(plan: FetchPlan) -> list[dict[str, Any]]:
    """Per datatype: files and bytes wanted, already present, to download."""
    rows: dict[str, dict[str, Any]] = {}
    present = {f.path for f in plan.present}
    for f in plan.wanted:
        kind = datatype_of(f.path)
        r = rows.setdefault(kind, dict(datatype=kind, files=0, bytes=0, present=0, to_fetch=0))
        r["files"] += 1
        r["bytes"] += f.size
        r["present" if f.path in present else "to_fetch"] += 1
    return [rows[k] for k in sorted(rows)]
