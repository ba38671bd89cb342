"""`curate build-manifest`'s core: read the index (or the released OpenMind
CSV) with its paths as stored, take the scores, filter, resolve the paths of
the rows kept only, split by subject, write the manifest and its sidecar.

Arrow from end to end, no per-row Python on the parquet path: the 113,921
rows of the OpenMind CSV build in about 0.4 CPU-s in-process
(`benchmarks/openmind_csv_scale.py` times the whole command against pandas).
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from openmind_curate import __version__, preflight, tables
from openmind_curate import index as store
from openmind_curate.errors import InputError
from openmind_curate.manifest import corruption, openmind_csv, split, writers
from openmind_curate.manifest import filters as F
from openmind_curate.paths import rebase_table
from openmind_curate.schema import IMAGE_INDEX, MANIFEST, validate

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
    f: F.Filters,
    fmt: str = "parquet",
    val_fraction: float = 0.01,
    seed: int = 0,
    val_subjects: int | None = None,
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
    if f.keep_flagged:
        parts.append("with-flagged")
    if f.require_metrics:
        parts.append("checked")
    if val_subjects is not None:
        parts.append(f"val-{val_subjects}-subjects")
    elif val_fraction != 0.01:
        parts.append(f"val-{_fmt(val_fraction)}")
    if seed != 0:
        parts.append(f"seed-{seed}")
    stem = re.sub(r"[^A-Za-z0-9._+-]", "-", "_".join(parts) or "all")
    if fmt == "nnssl":
        return f"{stem}/pretrain_data.json"
    return stem + _EXT[fmt]


#: The columns `--iqs` reads from an IQS table (`curate iqs --out`).
SCORES = pa.schema([IMAGE_INDEX.field(c) for c in ("image_id", "iqs", "iqs_image")])


def read_scores(path: Path) -> pa.Table:
    """An IQS table's ``image_id``, ``iqs``, ``iqs_image`` (validated)."""
    hint = "(an IQS table from `curate iqs --out` has image_id, iqs, iqs_image)"
    return tables.read_table(path, "--iqs", SCORES.names, schema=SCORES, hint=hint)


def with_scores(table: pa.Table, scores: pa.Table) -> pa.Table:
    """`table` with iqs and iqs_image taken from `scores` (by image_id); an
    image the file does not list is unrated."""
    pos = pc.index_in(table.column("image_id"), value_set=scores.column("image_id"))
    for name in ("iqs", "iqs_image"):
        i = table.column_names.index(name)
        values = scores.column(name).combine_chunks().take(pos)
        table = table.set_column(i, table.schema.field(i), values)
    return table


@dataclass
class Source:
    """A build's input: the rows the filters test (`table`, every row, path
    columns as stored, relative to `base`) and the sidecar's ``inputs``. From
    the OpenMind CSV, `table` holds only the columns the filters test, and
    the kept rows are derived from the `release` after filtering."""

    table: pa.Table
    base: str
    inputs: dict[str, Any]
    release: openmind_csv.Release | None = None

    def rows(self, keep: np.ndarray) -> pa.Table:
        """The `keep` rows as `schema.IMAGE_INDEX`, path columns as stored."""
        mask = pa.array(keep)
        kept = self.table.filter(mask)
        if self.release is None:
            return kept
        rows = self.release.index_rows(mask)
        for name in ("iqs", "iqs_image"):  # the scores as `--iqs` left them
            i = rows.column_names.index(name)
            rows = rows.set_column(i, rows.schema.field(i), kept.column(name))
        return rows


def load(
    index_path: Path, iqs_file: Path | None = None, openmind_root: Path | None = None
) -> Source:
    """The rows to filter, from an index (`index.read`'s stored-paths fast
    path) or the OpenMind CSV, with the scores of `iqs_file` if given."""
    index_path = Path(index_path)
    release = None
    if openmind_csv.is_openmind_csv(index_path):
        root = openmind_root or writers.openmind_root_from_sidecar(index_path)
        release = openmind_csv.Release.open(index_path, root)
        table, base, kind = release.probe(), release.base, "openmind-csv"
    else:
        table, base = store.read(index_path, paths="stored"), store.base_dir(index_path)
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
    return Source(table, base, inputs, release)


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


def resolve_out(
    out: Path | None,
    f: F.Filters,
    fmt: str,
    val_fraction: float,
    seed: int,
    val_subjects: int | None = None,
) -> Path:
    if out is None:
        out = DEFAULT_DIR / default_name(f, fmt, val_fraction, seed, val_subjects)
    return Path(os.path.abspath(out))


def build(
    index_path: Path,
    f: F.Filters,
    out: Path | None = None,
    *,
    fmt: str = "parquet",
    val_fraction: float = 0.01,
    val_subjects: int | None = None,
    seed: int = 0,
    iqs_file: Path | None = None,
    openmind_root: Path | None = None,
    allow_empty: bool = False,
    collection_name: str = "Dataset001_OpenMind",
    command: list[str] | None = None,
    metrics_file: Path | None = None,
) -> BuildResult:
    """Build and write one manifest (`fmt`: parquet, nnssl or openmind-csv)
    and its JSON sidecar, from an index or the OpenMind CSV at `index_path`;
    raises `InputError` for a user mistake. The validation split takes
    `val_subjects` subjects when given, else `val_fraction` of them. The
    metrics table (`metrics_file`, else `corruption.default_path` when it
    exists) drops the images `curate metrics` found broken."""
    started = time.perf_counter()
    if fmt not in writers.FORMATS:
        raise InputError(f"--format {fmt!r}: use one of {', '.join(writers.FORMATS)}")
    if not 0 <= val_fraction < 1:
        raise InputError(f"--val-fraction {val_fraction} must be at least 0 and below 1")
    if val_subjects is not None and val_subjects < 0:
        raise InputError(f"--val-subjects {val_subjects} must be 0 or more")
    source = load(index_path, iqs_file, openmind_root)
    total = source.table.num_rows
    if f.iqs_max is not None:
        _check_scored(source.table, f, source.inputs)
    metrics = _read_metrics(index_path, metrics_file, f, source.inputs)
    # checked once the inputs are: a refused build makes no folder
    out = preflight.output_file(resolve_out(out, f, fmt, val_fraction, seed, val_subjects))
    keep, steps = F.select(source.table, f)
    keep, checked = _check_metrics(source, metrics, f, keep, steps, index_path)
    kept = rebase_table(source.rows(keep), source.base)
    if kept.num_rows == 0 and not allow_empty:
        raise EmptyManifestError(_empty_message(steps, total))
    split_col, split_counts = split.assign(kept, val_fraction, seed, val_subjects)
    manifest = validate(kept.append_column(MANIFEST.field("split"), split_col), MANIFEST)
    if fmt == "parquet":
        paths = writers.write_parquet(manifest, out)
    elif fmt == "nnssl":
        paths = writers.write_nnssl(manifest, out, collection_name)
    else:
        paths = writers.write_openmind_csv(manifest, out)
    data = {
        "manifest": out.name,
        "format": fmt,
        "toolkit": {"name": "openmind-curate", "version": __version__},
        "command": command if command is not None else sys.argv,
        "inputs": source.inputs,
        "filters": f.to_json(),
        "steps": [s.to_json() for s in steps],
        "unrated_dropped": sum(s.detail.get("unrated_dropped", 0) for s in steps),
        "metrics_check": checked,
        "split": split_counts.to_json(),
        "counts": {"input_images": total, **counts(manifest)},
        "paths": paths,
        "seconds": round(time.perf_counter() - started, 3),
    }
    side = writers.write_sidecar(out, data)
    return BuildResult(manifest, out, side, steps, split_counts, total, data)


def _read_metrics(
    index_path: Path, given: Path | None, f: F.Filters, inputs: dict[str, Any]
) -> corruption.MetricsTable | None:
    """The metrics table to check the images against (None: none found), and
    its entry in the sidecar's ``inputs``."""
    path = corruption.find(index_path, given)
    if path is None:
        if f.require_metrics:
            raise corruption.no_table(index_path)
        inputs["metrics"] = None
        return None
    table = corruption.MetricsTable.read(path)
    inputs["metrics"] = {
        "path": str(path),
        "sha256": sha256(path),
        "rows": table.table.num_rows,
        "found": "--metrics" if given is not None else "default (beside the index)",
    }
    return table


def _check_metrics(
    source: Source,
    metrics: corruption.MetricsTable | None,
    f: F.Filters,
    keep: np.ndarray,
    steps: list[F.Step],
    index_path: Path,
) -> tuple[np.ndarray, dict[str, Any]]:
    """The metrics step after the filters (appended to `steps` when there is
    a table), the rows it keeps, and the sidecar's ``metrics_check``."""
    if metrics is None:
        return keep, corruption.not_found(index_path, keep)
    step, keep = corruption.step(
        source.table.column("image_id"),
        keep,
        metrics,
        lambda rows: _mtimes(source, rows),
        require=f.require_metrics,
        keep_flagged=f.keep_flagged,
    )
    steps.append(step)
    return keep, {"filter": step.name, **step.detail}


def _mtimes(source: Source, rows: np.ndarray) -> np.ndarray:
    """The mtime_ns of the files of `rows` (-1 where one cannot be read)."""
    mask = np.zeros(source.table.num_rows, bool)
    mask[rows] = True
    table = rebase_table(source.rows(mask), source.base)
    out = np.full(rows.size, -1, np.int64)
    roots, paths = table.column("root").to_pylist(), table.column("path").to_pylist()
    for i, (root, path) in enumerate(zip(roots, paths, strict=True)):
        try:
            out[i] = os.stat(os.path.join(root, path)).st_mtime_ns
        except (OSError, TypeError):
            pass
    return out


def _check_scored(table: pa.Table, f: F.Filters, inputs: dict[str, Any]) -> None:
    """--iqs-max on input without a single score is a step left out (`curate
    iqs`), not a filter to loosen: say which."""
    if table.num_rows == 0 or table.column(f.iqs_column).null_count < table.num_rows:
        return
    source = inputs["index"]["path"]
    if inputs["iqs"] is not None:
        raise InputError(
            f"--iqs-max: the IQS table {inputs['iqs']['path']} scores none of the "
            f"{table.num_rows} images of {source} (is it from this index?)"
        )
    if inputs["index"]["kind"] == "openmind-csv":
        raise InputError(
            f"--iqs-max: {source} has no image_quality_score in any row; give the scores "
            "with --iqs FILE (from `curate iqs --out`)"
        )
    step = "curate iqs --model" if f.use_predicted_iqs else "curate iqs"
    raise InputError(
        f"--iqs-max: no image of the index {source} has an {f.iqs_column} yet: run "
        f"`{step}` first (or give --iqs FILE)"
    )


def _empty_message(steps: list[F.Step], total: int) -> str:
    if total == 0:
        return "the input has no images; nothing to write (--allow-empty writes an empty manifest)"
    emptied = next((s for s in steps if s.after == 0), None)
    where = f" after {emptied.name} ({emptied.rule}: {emptied.before} -> 0)" if emptied else ""
    return (
        f"no image passes the filters{where}; loosen them, or give --allow-empty to "
        "write an empty manifest"
    )
