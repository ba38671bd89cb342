"""Manifest writers (parquet, nnssl ``pretrain_data.json``, OpenMind CSV), the
JSON sidecar, and `read_manifest`, the reader the training stage uses.

Paths. A parquet manifest stores ``root``, ``anat_mask_path`` and
``anon_mask_path`` relative to the manifest's own folder (``path`` stays
relative to ``root``), and says so in its parquet metadata and its sidecar:
moving the tree with the manifest keeps it usable. `read_manifest` returns
them absolute. An OpenMind CSV stores them relative to the corpus folder,
which its sidecar records relative to the CSV's folder. nnssl resolves no
path relative to its JSON (only ``$nnssl_raw``/``$nnssl_preprocessed``
prefixes), so the nnssl export holds absolute paths, written with those
prefixes where the variables are set, as nnssl's own converter does.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from openmind_curate.atomic import atomic_path, atomic_write_text
from openmind_curate.errors import DataError
from openmind_curate.manifest import openmind_csv
from openmind_curate.paths import PATH_COLUMNS, rebase, relative_to, to_absolute
from openmind_curate.schema import ACQUISITION_COLUMNS, MANIFEST, SchemaError, validate

FORMATS = ("parquet", "nnssl", "openmind-csv")
META_KEY = b"openmind_curate.manifest"
MANIFEST_VERSION = 1


class ManifestError(DataError):
    """A manifest file cannot be read; names the file and why."""


def sidecar_path(out: str | os.PathLike[str]) -> Path:
    """``<name>.json`` beside the manifest (``<name>.sidecar.json`` for a JSON manifest)."""
    out = Path(out)
    stem = out.stem
    for ext in (".csv.gz", ".parquet", ".csv", ".json"):
        if out.name.endswith(ext):
            stem = out.name[: -len(ext)]
            break
    if out.suffix == ".json":
        return out.with_name(f"{stem}.sidecar.json")
    return out.with_name(f"{stem}.json")


# ------------------------------------------------------------------ parquet


def write_parquet(table: pa.Table, out: Path) -> dict[str, Any]:
    """`table` (MANIFEST, absolute paths) stored with paths relative to `out`'s
    folder; returns the sidecar's ``paths`` entry."""
    folder = str(out.parent)
    stored = table
    for name in PATH_COLUMNS:
        i = stored.column_names.index(name)
        stored = stored.set_column(
            i, stored.schema.field(i), relative_to(stored.column(name), folder)
        )
    paths = {
        "base": "manifest_folder",
        "columns": list(PATH_COLUMNS),
        "note": "relative to the manifest's folder; `path` is relative to `root`",
        "built_in": folder,
    }
    meta = {
        META_KEY: json.dumps(
            {"version": MANIFEST_VERSION, "paths": paths["base"], "columns": list(PATH_COLUMNS)}
        )
    }
    with atomic_path(out) as tmp:
        pq.write_table(stored.replace_schema_metadata(meta), tmp)
    return paths


def read_manifest(path: str | os.PathLike[str], *, as_frame: bool = False):
    """A parquet manifest, validated against `schema.MANIFEST`, with absolute
    ``root``, ``anat_mask_path`` and ``anon_mask_path`` (a DataFrame with
    ``as_frame=True``). Works wherever the tree was moved to."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"no manifest at {path} (run `curate build-manifest`)")
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise ManifestError(f"cannot read manifest {path}: not a parquet file ({exc})") from None
    raw = (table.schema.metadata or {}).get(META_KEY)
    try:
        meta = json.loads(raw) if raw else {}
    except ValueError:
        meta = {}
    if int(meta.get("version", MANIFEST_VERSION)) > MANIFEST_VERSION:
        raise ManifestError(f"manifest {path} was written by a newer openmind-curate: upgrade")
    try:
        table = validate(table.replace_schema_metadata(None), MANIFEST)
    except SchemaError as exc:
        raise ManifestError(f"{path} is not a manifest: {exc}") from None
    if meta.get("paths", "manifest_folder") == "manifest_folder":
        base = os.path.dirname(os.path.abspath(path))
        for name in meta.get("columns", PATH_COLUMNS):
            i = table.column_names.index(name)
            table = table.set_column(
                i, table.schema.field(i), to_absolute(table.column(name), base)
            )
    return table.to_pandas() if as_frame else table


# -------------------------------------------------------------------- nnssl

SUBJECT_INFO = ("age", "sex", "handedness", "race", "weight", "bmi", "health_status")
IMAGE_INFO = ("derived_from", "is_brain_extract", *ACQUISITION_COLUMNS)
DEFAULT_SESSION = "ses-DEFAULT"


def _env_prefixed(path: str | None) -> str | None:
    """nnssl's ``make_paths_relative``: a path under ``$nnssl_raw`` or
    ``$nnssl_preprocessed`` is written with the variable in front."""
    if path is None:
        return None
    for var in ("nnssl_raw", "nnssl_preprocessed"):
        value = os.environ.get(var)
        if value and path.startswith(value):
            return path.replace(value, f"${var}", 1)
    return path


def nnssl_pretrain_data(
    table: pa.Table, collection_name: str = "Dataset001_OpenMind", collection_index: int = 1
) -> dict[str, Any]:
    """A manifest (absolute paths) as nnssl's ``pretrain_data.json``.

    Matches, field for field, what ``Collection.to_dict`` writes in
    MIC-DKFZ/nnssl ``nnssl/data/raw_dataset.py`` (dataclasses Collection ->
    Dataset -> Subject -> Session -> Image, with AssociatedMasks) as filled by
    its OpenMind converter ``nnssl/dataset_conversion/Dataset001_OpenMind.py``:

    - ``{"collection_index", "collection_name", "datasets": {dataset_id: ...}}``
    - dataset: ``{"dataset_index": dataset_id, "name": null, "dataset_info":
      {"image_quality_score": [{"modality", "derived_from",
      "image_quality_score"}, ...]}, "subjects": {subject_id: ...}}``; the list
      holds the first known IQS of each (modality, derived_from) group, as
      the converter's ``groupby(...).first()`` does;
    - subject: ``{"subject_id": "sub-XX", "sessions": {...}, "subject_info":
      {age, sex, handedness, race, weight, bmi, health_status: known ones}}``;
    - session: ``{"session_id": "ses-YY" or "ses-DEFAULT", "session_info":
      null, "images": [...]}``;
    - image: ``{"name", "image_path", "modality", "image_info": {derived_from,
      is_brain_extract, manufacturer, model_name, phase_encoding_direction,
      magnetic_field_strength, repetition_time, echo_time: known ones},
      "associated_masks": {"anonymization_mask", "anatomy_mask"}}``; the name
      is the file name, or for a derived image (``derived_from`` set) the
      parent folder's name less its last 5 characters plus the file name,
      the converter's rule.
    """
    cols = {c: table.column(c).to_pylist() for c in _NNSSL_COLUMNS}
    image_paths = pc.binary_join_element_wise(table.column("root"), table.column("path"), "/")
    image_paths = image_paths.to_pylist()
    datasets: dict[str, dict[str, Any]] = {}
    groups: dict[str, dict[tuple, Any]] = defaultdict(dict)
    for i in range(table.num_rows):
        ds = cols["dataset_id"][i]
        _session(datasets, cols, i)["images"].append(_nnssl_image(cols, i, image_paths[i]))
        key = (cols["modality"][i], cols["derived_from"][i])
        if groups[ds].get(key) is None:  # pandas' groupby().first(): the first known value
            groups[ds][key] = cols["iqs"][i]
    for ds, dataset in datasets.items():
        dataset["dataset_info"]["image_quality_score"] = [
            {"modality": m, "derived_from": d, "image_quality_score": v}
            for (m, d), v in groups[ds].items()
        ]
    return {
        "collection_index": collection_index,
        "collection_name": collection_name,
        "datasets": datasets,
    }


_NNSSL_COLUMNS = (
    "dataset_id",
    "subject",
    "session",
    "image_id",
    "modality",
    "path",
    "iqs",
    "anat_mask_path",
    "anon_mask_path",
    *SUBJECT_INFO,
    *[c for c in IMAGE_INFO if c != "is_brain_extract"],
    "is_brain_extracted",
)


def _session(datasets: dict[str, dict[str, Any]], cols: dict[str, list], i: int) -> dict:
    """Row `i`'s session entry, its dataset, subject and session made on first sight."""
    ds = cols["dataset_id"][i]
    dataset = datasets.setdefault(
        ds, {"dataset_index": ds, "name": None, "dataset_info": {}, "subjects": {}}
    )
    subject_id = f"sub-{cols['subject'][i] or cols['image_id'][i]}"
    subject = dataset["subjects"].get(subject_id)
    if subject is None:
        info = {k: cols[k][i] for k in SUBJECT_INFO if cols[k][i] is not None}
        subject = dataset["subjects"][subject_id] = {
            "subject_id": subject_id,
            "sessions": {},
            "subject_info": info,
        }
    session = cols["session"][i]
    session_id = f"ses-{session}" if session else DEFAULT_SESSION
    return subject["sessions"].setdefault(
        session_id, {"session_id": session_id, "session_info": None, "images": []}
    )


def _nnssl_image(cols: dict[str, list], i: int, image_path: str) -> dict[str, Any]:
    """Row `i` as an nnssl Image: the converter's name rule, known info, masks."""
    image_info = {
        k: cols[k][i] for k in IMAGE_INFO if k != "is_brain_extract" and cols[k][i] is not None
    }
    if cols["is_brain_extracted"][i] is not None:
        image_info["is_brain_extract"] = cols["is_brain_extracted"][i]
    parts = cols["path"][i].split("/")
    name = parts[-1]
    if "derived_from" in image_info and len(parts) > 1:
        name = parts[-2][:-5] + parts[-1]
    return {
        "name": name,
        "image_path": _env_prefixed(image_path),
        "modality": cols["modality"][i],
        "image_info": image_info,
        "associated_masks": {
            "anonymization_mask": _env_prefixed(cols["anon_mask_path"][i]),
            "anatomy_mask": _env_prefixed(cols["anat_mask_path"][i]),
        },
    }


def write_nnssl(table: pa.Table, out: Path, collection_name: str) -> dict[str, Any]:
    data = nnssl_pretrain_data(table, collection_name)
    atomic_write_text(out, json.dumps(data, indent=4, sort_keys=True))
    return {
        "base": "absolute",
        "columns": ["image_path", "anonymization_mask", "anatomy_mask"],
        "note": "absolute (nnssl resolves only $nnssl_raw/$nnssl_preprocessed prefixes)",
    }


# ------------------------------------------------------------- OpenMind CSV


def write_openmind_csv(table: pa.Table, out: Path) -> dict[str, Any]:
    base = openmind_csv.corpus_base(table)
    layout = openmind_csv.to_layout(table, base)
    with atomic_path(out) as tmp:
        openmind_csv.write_csv(layout, tmp)
    rel = relative_to(pa.array([base]), str(out.parent))[0].as_py()
    return {
        "base": "openmind_root",
        "openmind_root": rel,
        "columns": ["image_path", "anat_mask_path", "anon_mask_path"],
        "note": "relative to openmind_root, itself relative to the CSV's folder",
        "built_in": str(out.parent),
    }


def openmind_root_from_sidecar(csv_path: Path) -> Path | None:
    """The corpus folder a CSV written by `write_openmind_csv` records."""
    side = sidecar_path(csv_path)
    try:
        paths = json.loads(side.read_text())["paths"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    rel = paths.get("openmind_root") if isinstance(paths, dict) else None
    if rel is None:
        return None
    return Path(rebase(pa.array([rel]), str(csv_path.parent.absolute()))[0].as_py())


def write_sidecar(out: Path, data: dict[str, Any]) -> Path:
    side = sidecar_path(out)
    atomic_write_text(side, json.dumps(data, indent=2) + "\n")
    return side
