"""`curate build-manifest`'s core: read the index (or the OpenMind CSV), take
the scores, filter, split by subject, write the manifest and its sidecar.

Pure Arrow from end to end (no pandas, no per-row Python on the parquet
path), so a 113,921-row index builds in well under a second.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from openmind_curate import __version__, preflight
from openmind_curate import index as store
from openmind_curate.manifest import filters as F
from openmind_curate.manifest import openmind_csv, split, writers
from openmind_curate.manifest.paths import PATH_COLUMNS, rebase_table
from openmind_curate.preflight import InputError
from openmind_curate.schema import IMAGE_INDEX, MANIFEST, SchemaError, validate

#: Where manifests go when no --out is given (relative to the working folder).
DEFAULT_DIR = Path("manifests")
_EXT = {"parquet": ".parquet", "openmind-csv": ".csv"}


class EmptyManifestError(InputError):
    """No image passes the filters (and --allow-empty was not given)."""


@dataclass
class BuildResult:
    table: pa.Table  # the manifest, absolute paths
    out: Path
    sidecar: Path
    steps: list[F.Step]
    split: split.SplitCounts
    total: int  # rows read
    sidecar_data: dict[str, Any] = field(default_factory=dict)

    @property
    def unrated_dropped(self) -> int:
        return sum(s.detail.get("unrated_dropped", 0) for s in self.steps)


def sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _fmt(x: float) -> str:
    return f"{x:g}"


def _names(values: tuple[str, ...], what: str) -> str:
    joined = "-".join(values)
    if len(values) <= 4 and len(joined) <= 48:
        return joined
    digest = hashlib.sha1(",".join(values).encode()).hexdigest()[:8]
    return f"{len(values)}{what}-{digest}"


def default_name(
    f: F.Filters, fmt: str = "parquet", val_fraction: float = 0.01, seed: int = 0
) -> str:
    """A file name that says the filter: ``iqs-le-2.5_T1w-T2w-FLAIR.parquet``."""
    parts: list[str] = []
    if f.iqs_max is not None:
        parts.append(
            f"{'iqspred' if f.use_predicted_iqs else 'iqs'}-le-{_fmt(f.iqs_max)}"
            + ("-or-unrated" if f.keep_unrated else "")
        )
    if f.modalities:
        parts.append(_names(f.modalities, "mod"))
    if f.exclude_modalities:
        parts.append("no-" + _names(f.exclude_modalities, "mod"))
    if f.datasets:
        parts.append("ds-" + _names(f.datasets, "ds"))
    if f.exclude_datasets:
        parts.append("no-ds-" + _names(f.exclude_datasets, "ds"))
    if f.max_spacing is not None:
        parts.append(f"sp-le-{_fmt(f.max_spacing)}")
    if f.require_masks:
        parts.append("masks")
    if f.header_status != ("ok",):
        parts.append("hdr-" + ("any" if f.header_status is None else "-".join(f.header_status)))
    if f.keep_4d:
        parts.append("with-4d")
    if val_fraction != 0.01:
        parts.append(f"val-{_fmt(val_fraction)}")
    if seed != 0:
        parts.append(f"seed-{seed}")
    stem = re.sub(r"[^A-Za-z0-9._+-]", "-", "_".join(parts) or "all")
    if fmt == "nnssl":
        return f"{stem}/pretrain_data.json"
    return stem + _EXT[fmt]


def read_scores(path: Path) -> pa.Table:
    """An IQS-schema parquet's ``image_id``, ``iqs``, ``iqs_image`` (validated)."""
    if not path.is_file():
        raise InputError(f"--iqs {path}: file not found (write it with `curate iqs`)")
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"--iqs {path}: not a parquet file ({exc})") from None
    need = ("image_id", "iqs", "iqs_image")
    missing = [c for c in need if c not in table.column_names]
    if missing:
        raise InputError(
            f"--iqs {path}: no column {', '.join(missing)} (an IQS table from "
            "`curate iqs` has image_id, iqs, iqs_image)"
        )
    schema = pa.schema([IMAGE_INDEX.field(c) for c in need])
    try:
        return validate(table.select(list(need)), schema)
    except SchemaError as exc:
        raise InputError(f"--iqs {path}: {exc}") from None


def with_scores(table: pa.Table, scores: pa.Table) -> pa.Table:
    """`table` with iqs and iqs_image taken from `scores` (by image_id); an
    image the file does not list is unrated."""
    pos = pc.index_in(table.column("image_id"), value_set=scores.column("image_id"))
    for name in ("iqs", "iqs_image"):
        i = table.column_names.index(name)
        values = scores.column(name).combine_chunks().take(pos)
        table = table.set_column(i, table.schema.field(i), values)
    return table


def read_index(index_path: Path) -> tuple[pa.Table, str]:
    """`index.read`, with the path columns left as stored; returns the table
    and the folder they are relative to (``/`` when they are absolute).

    ``index.read`` maps each distinct path through ``os.path`` (0.5 s for the
    corpus's 228k distinct mask paths); the build filters first and makes
    only the kept rows' paths absolute, in Arrow (`paths.to_absolute`). This
    reads the same file and validates it the same way; anything but a
    current, readable index (missing, older, newer, not parquet) goes to
    ``index.read`` for its upgrade or its error message.
    """
    try:
        pf = pq.ParquetFile(index_path)
        raw = (pf.schema_arrow.metadata or {}).get(store.META_KEY)
        version = int(json.loads(raw)["version"]) if raw else None
    except (OSError, ValueError, KeyError, TypeError, pa.ArrowException):
        version = None
    if version != store.INDEX_VERSION:
        return store.read(index_path), "/"
    table = pf.read()
    for f in IMAGE_INDEX:  # an index written before a stage existed
        if f.name not in table.column_names and (f.metadata or {}).get(b"stage"):
            table = table.append_column(f, pa.nulls(table.num_rows, f.type))
    try:
        table = validate(table, IMAGE_INDEX)
    except SchemaError as exc:
        raise store.IndexStoreError(f"{index_path} is not an image index: {exc}") from None
    return table, store.base_dir(index_path)


def load(
    index_path: Path, iqs_file: Path | None = None, openmind_root: Path | None = None
) -> tuple[pa.Table, str, dict[str, Any]]:
    """The input rows (IMAGE_INDEX), the folder their path columns are
    relative to (`paths.to_absolute` makes them absolute), and the sidecar's
    ``inputs``."""
    index_path = Path(index_path)
    if openmind_csv.is_openmind_csv(index_path):
        root = openmind_root or writers.openmind_root_from_sidecar(index_path)
        table, base = openmind_csv.read(index_path, root), "/"
        kind = "openmind-csv"
    else:
        table, base = read_index(index_path)
        kind = "index"
    inputs: dict[str, Any] = {
        "index": {
            "path": os.path.abspath(index_path),
            "kind": kind,
            "sha256": sha256(index_path),
            "rows": table.num_rows,
        },
        "iqs": None,
    }
    if kind == "openmind-csv":
        inputs["index"]["scores"] = "image_quality_score column"
        if openmind_root is not None:
            inputs["index"]["openmind_root"] = os.path.abspath(openmind_root)
    if iqs_file is not None:
        scores = read_scores(Path(iqs_file))
        table = with_scores(table, scores)
        inputs["iqs"] = {
            "path": os.path.abspath(iqs_file),
            "sha256": sha256(Path(iqs_file)),
            "rows": scores.num_rows,
        }
    return table, base, inputs


def counts(table: pa.Table) -> dict[str, Any]:
    """Images, subjects and datasets kept, overall and per modality."""
    keys = split.subject_keys(table)
    out: dict[str, Any] = {
        "images": table.num_rows,
        "subjects": len(pc.unique(keys)),
        "datasets": len(pc.unique(table.column("dataset_id"))),
        "per_modality": {},
    }
    if table.num_rows == 0:
        return out
    grouped = (
        pa.table(
            {
                "modality": table.column("modality"),
                "subject": keys,
                "dataset_id": table.column("dataset_id"),
                "val": pc.equal(table.column("split"), "val").cast(pa.int64()),
            }
        )
        .group_by("modality")
        .aggregate(
            [
                ("subject", "count"),
                ("subject", "count_distinct"),
                ("dataset_id", "count_distinct"),
                ("val", "sum"),
            ]
        )
    )
    rows = sorted(grouped.to_pylist(), key=lambda r: (-r["subject_count"], r["modality"]))
    for r in rows:
        out["per_modality"][r["modality"]] = {
            "images": r["subject_count"],
            "subjects": r["subject_count_distinct"],
            "datasets": r["dataset_id_count_distinct"],
            "val_images": r["val_sum"],
        }
    return out


def resolve_out(out: Path | None, f: F.Filters, fmt: str, val_fraction: float, seed: int) -> Path:
    if out is None:
        out = DEFAULT_DIR / default_name(f, fmt, val_fraction, seed)
    return Path(os.path.abspath(out))


def build(
    index_path: Path,
    f: F.Filters,
    out: Path | None = None,
    *,
    fmt: str = "parquet",
    val_fraction: float = 0.01,
    seed: int = 0,
    iqs_file: Path | None = None,
    openmind_root: Path | None = None,
    allow_empty: bool = False,
    collection_name: str = "Dataset001_OpenMind",
    command: list[str] | None = None,
) -> BuildResult:
    """Build and write one manifest; raises InputError for a user mistake."""
    started = time.perf_counter()
    if fmt not in writers.FORMATS:
        raise InputError(f"--format {fmt!r}: use one of {', '.join(writers.FORMATS)}")
    if not 0 <= val_fraction < 1:
        raise InputError(f"--val-fraction {val_fraction} must be at least 0 and below 1")
    out = preflight.output_file(resolve_out(out, f, fmt, val_fraction, seed))
    table, base, inputs = load(index_path, iqs_file, openmind_root)
    total = table.num_rows
    kept, steps = F.apply(table, f)
    kept = rebase_table(kept, base, None, PATH_COLUMNS)
    if kept.num_rows == 0 and not allow_empty:
        raise EmptyManifestError(_empty_message(steps, total))
    split_col, split_counts = split.assign(kept, val_fraction, seed)
    manifest = validate(kept.append_column(MANIFEST.field("split"), split_col), MANIFEST)
    if fmt == "parquet":
        paths = writers.write_parquet(manifest, out)
    elif fmt == "nnssl":
        paths = writers.write_nnssl(manifest, out, collection_name)
    else:
        paths = writers.write_openmind_csv(manifest, out)
    result_counts = counts(manifest)
    data = {
        "manifest": out.name,
        "format": fmt,
        "toolkit": {"name": "openmind-curate", "version": __version__},
        "command": command if command is not None else sys.argv,
        "inputs": inputs,
        "filters": f.to_json(),
        "steps": [s.to_json() for s in steps],
        "unrated_dropped": sum(s.detail.get("unrated_dropped", 0) for s in steps),
        "split": split_counts.to_json(),
        "counts": {"input_images": total, **result_counts},
        "paths": paths,
        "seconds": round(time.perf_counter() - started, 3),
    }
    side = writers.write_sidecar(out, data)
    return BuildResult(manifest, out, side, steps, split_counts, total, data)


def _empty_message(steps: list[F.Step], total: int) -> str:
    if total == 0:
        return "the input has no images; nothing to write (--allow-empty writes an empty manifest)"
    emptied = next((s for s in steps if s.after == 0), None)
    where = f" after {emptied.name} ({emptied.rule}: {emptied.before} -> 0)" if emptied else ""
    return (
        f"no image passes the filters{where}; loosen them, or give --allow-empty to "
        "write an empty manifest"
    )
