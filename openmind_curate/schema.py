"""The Arrow schema of every stored table, defined once (docs/design/contracts.md).

Every writer and reader goes through `validate`, so a table that leaves a stage
is known to match its contract. Value rules that Arrow types cannot express
(allowed labels, numeric ranges) are stored as field metadata and checked by
`validate` too, so the rule lives beside the column it constrains.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from openmind_curate.errors import DataError

#: Modality groups (paper Table 10); anything else is `other`.
MODALITIES: tuple[str, ...] = (
    "T1w",
    "T2w",
    "FA",
    "MD",
    "FLAIR",
    "MP2RAGE",
    "sbref",
    "ADC",
    "TRACE",
    "UNIT1",
    "inplaneT2",
    "SWI",
    "UNIT1_denoised",
    "minIP",
    "PET",
    "T1map",
    "inplaneT1",
    "angio",
    "PDw",
    "T2starw",
    "FLASH",
    "T2map",
    "T2starmap",
    "DWI",
    "other",
)
HEADER_STATUSES: tuple[str, ...] = ("ok", "empty", "corrupt", "missing", "unreadable")
SEXES: tuple[str, ...] = ("M", "F", "O")
HANDEDNESS: tuple[str, ...] = ("R", "L", "A")


class SchemaError(DataError):
    """A table does not match its contract; names the column and, where known, the row."""

    def __init__(self, table: str, column: str, message: str, row: int | None = None):
        self.table, self.column, self.row = table, column, row
        where = f"column '{column}'" + (f", row {row}" if row is not None else "")
        super().__init__(f"{table}: {where}: {message}")


def _f(
    name: str,
    type_: pa.DataType,
    nullable: bool = True,
    *,
    allowed: Sequence[str] | None = None,
    min: float | None = None,  # noqa: A002 - mirrors the metadata key
    max: float | None = None,  # noqa: A002
    doc: str = "",
    stage: str | None = None,
) -> pa.Field:
    meta: dict[str, str] = {"doc": doc}
    if stage is not None:
        meta["stage"] = stage
    if allowed is not None:
        meta["allowed"] = json.dumps(list(allowed))
    if min is not None:
        meta["min"] = json.dumps(min)
    if max is not None:
        meta["max"] = json.dumps(max)
    return pa.field(name, type_, nullable=nullable, metadata=meta)


_S, _I, _F, _B = pa.string(), pa.int64(), pa.float64(), pa.bool_()

#: BIDS entities kept as their own columns (others go to `entities` JSON).
ENTITY_COLUMNS: tuple[str, ...] = (
    "subject",
    "session",
    "task",
    "acq",
    "ce",
    "rec",
    "dir",
    "run",
    "echo",
    "flip",
    "inv",
    "mt",
    "part",
)

IMAGE_INDEX = pa.schema(
    [
        _f("image_id", _S, False, doc="hash of dataset_id + path relative to the dataset root"),
        _f("dataset_id", _S, False),
        *[_f(e, _S, doc=f"BIDS entity {e}") for e in ENTITY_COLUMNS],
        _f("entities", _S, doc="all parsed entities as JSON"),
        _f("datatype", _S, doc="anat, dwi, func, ... (the folder)"),
        _f("suffix", _S, False),
        _f("extension", _S, False),
        _f("modality", _S, False, allowed=MODALITIES),
        _f("is_derivative", _B, False),
        _f("flags", _S, doc="comma-separated: phase, inversion, ..."),
        _f("root", _S, False, doc="dataset root folder, relative to the index's folder"),
        _f("path", _S, False, doc="path relative to the dataset root"),
        _f("size_bytes", _I, False, min=0),
        _f("mtime_ns", _I),
        _f("header_status", _S, False, allowed=HEADER_STATUSES),
        _f("shape", pa.list_(pa.int32())),
        _f("spacing", pa.list_(pa.float32())),
        _f("n_volumes", pa.int32(), min=0),
        _f("dtype", _S),
        _f("sidecar", _S, doc="inherited, merged JSON sidecar as text"),
        _f("manufacturer", _S),
        _f("model_name", _S),
        _f("magnetic_field_strength", _F, min=0),
        _f("repetition_time", _F, min=0, doc="seconds"),
        _f("echo_time", _F, min=0, doc="seconds"),
        _f("phase_encoding_direction", _S),
        _f("bval_path", _S),
        _f("bvec_path", _S),
        _f("age", _F, min=0, max=130, doc="years"),
        _f("age_raw", _S, doc="the value before harmonization, e.g. '20-25' or '89+'"),
        _f("sex", _S, allowed=SEXES),
        _f("handedness", _S, allowed=HANDEDNESS),
        _f("race", _S),
        _f("weight", _F, min=0, doc="kg"),
        _f("bmi", _F, min=0),
        _f("health_status", _S),
        _f("participant_extra", _S, doc="other participants.tsv columns as JSON"),
        _f("snapshot_tag", _S, doc="OpenNeuro snapshot the files came from"),
        _f("derived_from", _S, doc="image_id of the source image (DWI maps)", stage="dwi"),
        _f("is_brain_extracted", _B, stage="masks"),
        _f("anat_mask_path", _S, doc="relative to the index's folder", stage="masks"),
        _f("anon_mask_path", _S, doc="relative to the index's folder", stage="masks"),
        _f(
            "iqs",
            _F,
            min=1,
            max=5,
            stage="iqs",
            doc="the paper's IQS: the mean over the rated units of the image's group "
            "(dataset x modality, or dataset x DWI-derived); lower is better",
        ),
        _f(
            "iqs_image",
            _F,
            min=1,
            max=5,
            stage="iqs",
            doc="the image's own IQS from its raters (a DWI map: its DWI's); null if unrated",
        ),
        _f(
            "iqs_predicted",
            _F,
            min=1,
            max=5,
            stage="iqs",
            doc="per-image IQS predicted from the automatic metrics (curate iqs --model)",
        ),
    ]
)


#: Columns of IMAGE_INDEX (and MANIFEST) that hold a path to a file or folder:
#: stored relative to the table file's folder, absolute in memory (`paths`).
PATH_COLUMNS: tuple[str, ...] = ("root", "anat_mask_path", "anon_mask_path")


def stage_columns(schema: pa.Schema) -> list[str]:
    """Columns a stage after the crawl fills (field metadata ``stage``).

    The index store keeps them across a re-crawl for every unchanged image and
    clears them for a changed one: a new stage's column only needs the mark.
    """
    return [f.name for f in schema if (f.metadata or {}).get(b"stage")]


_RATING_AXIS = dict(min=1, max=5)

#: What a rated item is for: regular items feed the IQS and inter-rater
#: agreement, repeat items (a hidden second showing) only intra-rater
#: agreement, gold items (known answers) only rater accuracy.
ITEM_KINDS: tuple[str, ...] = ("regular", "repeat", "gold")

RATINGS = pa.schema(
    [
        _f("image_id", _S, False, doc="the rated unit: a DWI's maps are rated under the DWI's id"),
        _f("rater_id", _S, False),
        _f("kind", _S, False, allowed=ITEM_KINDS),
        _f("version", pa.int32(), False, min=1, doc="append-only: a correction is version + 1"),
        _f("submission_id", _S, False, doc="one per save: a repeated save is one rating"),
        _f("image_checksum", _S, doc="sha256 of the file(s) shown, so a changed file shows up"),
        _f("noisiness", pa.int8(), False, **_RATING_AXIS, doc="1 clean ... 5 unusable"),
        _f("blurriness", pa.int8(), False, **_RATING_AXIS, doc="1 sharp ... 5 unusable"),
        _f("artifact_level", pa.int8(), **_RATING_AXIS, doc="null for DWI-derived maps"),
        _f("fov_suboptimal", _B, False),
        _f("corrupted", _B, False),
        _f("comment", _S),
        _f("seconds_spent", _F, min=0),
        _f("window_settings", _S, doc="JSON: level/width the rater used"),
        _f("app_version", _S),
        _f("created_at", pa.timestamp("us", tz="UTC"), False),
    ]
)

#: The IQS group of DWI-derived maps (never the dataset's acquired T2w group).
DWI_DERIVED_GROUP = "DWI-derived"

IQS = pa.schema(
    [
        _f("image_id", _S, False),
        _f("dataset_id", _S, False),
        _f("modality", _S, False, allowed=MODALITIES),
        _f(
            "group_key",
            _S,
            False,
            doc="dataset_id/modality, or dataset_id/DWI-derived for maps of a DWI",
        ),
        _f("n_raters", pa.int32(), False, min=0),
        _f("noisiness", _F, min=1, max=5, doc="mean across raters"),
        _f("blurriness", _F, min=1, max=5),
        _f("artifact_level", _F, min=1, max=5),
        _f("fov_suboptimal", _B, doc="worst across raters"),
        _f("corrupted", _B, doc="worst across raters"),
        _f("iqs_image", _F, min=1, max=5, doc="this image's own score; null if unrated"),
        _f("iqs", _F, min=1, max=5, doc="dataset x modality mean, given to every image"),
        _f("group_n_rated", pa.int32(), False, min=0),
    ]
)

MANIFEST = pa.schema(
    [
        *IMAGE_INDEX,
        _f("split", _S, False, allowed=("train", "val"), doc="subject-level split"),
    ]
)

#: What the crawler (and later batch stages) could not read, one row per file
#: and problem. Reported in summaries; never stops a batch.
PROBLEMS = pa.schema(
    [
        _f("dataset_id", _S, False),
        _f("root", _S, False, doc="dataset root, relative to the index's folder"),
        _f("path", _S, False, doc="relative to the dataset root ('.' for the dataset)"),
        _f(
            "kind",
            _S,
            False,
            doc="malformed_json, bad_tsv, encoding, duplicate, value, "
            "unreadable, header, dwi, crawl_failed",
        ),
        _f("message", _S, False),
    ]
)

_L = pa.list_(pa.float64())

#: Problems `curate metrics` checks for (quality.metrics module docstring).
CORRUPTION_CHECKS: tuple[str, ...] = (
    "unreadable",
    "nonfinite",
    "all_zero",
    "constant",
    "constant_slices",
    "fov_cut",
    "spacing",
)

#: Automatic quality metrics, one row per image (`curate metrics`).
METRICS = pa.schema(
    [
        _f("image_id", _S, False),
        _f("dataset_id", _S, False),
        _f("path", _S, False, doc="relative to the dataset root"),
        _f("modality", _S, allowed=MODALITIES),
        _f("problems", pa.list_(pa.string()), False, doc="failed corruption checks"),
        _f("corrupted", _B, False),
        _f("error", _S, doc="why the image could not be measured"),
        _f("snr_dietrich", _F, doc="median(head) / air sigma"),
        _f("cnr_otsu", _F),
        _f("contrast", _F, min=-1, max=1, doc="Michelson contrast of the two Otsu classes"),
        _f("efc", _F),
        _f("fber", _F, min=0),
        _f("fwhm_mm", _F, min=0),
        _f("ghost_ratio", _F, min=0),
        _f("ghost_axis", pa.int32()),
        _f("artifact_fraction", _F, min=0, max=1),
        _f("inu_range", _F, min=0),
        _f("noise_sigma", _F, min=0, doc="Rayleigh sigma of the air, stored intensity units"),
        _f("air_zero_fraction", _F, min=0, max=1),
        _f("head_litres", _F, min=0),
        _f("fov_border_fraction", _F, min=0, max=1),
        _f("nonfinite_voxels", _I, min=0),
        _f("constant_slices", _I, min=0),
        _f("mask_source", _S, allowed=("index", "computed"), doc="where the anatomy mask came"),
        _f("seconds", _F, min=0),
        _f(
            "source_mtime_ns",
            _I,
            doc="the image file's mtime when measured; build-manifest treats a row "
            "whose file has another mtime now as unchecked",
        ),
    ]
)

#: The generated corpus's answer key (`truth/images.parquet`), one row per file
#: the generator wrote. Paths are relative to the corpus root.
SYNTH_TRUTH = pa.schema(
    [
        _f("image_id", _S, False),
        _f("dataset_id", _S, False),
        _f("path", _S, False, doc="relative to the corpus root"),
        _f("rel_path", _S, False, doc="relative to the dataset root"),
        _f("subject", _S, False),
        _f("session", _S),
        _f("datatype", _S, False),
        _f("entities", _S, False, doc="JSON of the entities besides sub/ses"),
        _f("suffix", _S, False),
        _f("kind", _S, False, allowed=("image", "mask", "label")),
        _f("is_derivative", _B, False),
        _f("modality", _S, allowed=MODALITIES, doc="expected group; null if not an image"),
        _f("flags", _S),
        _f("contrast", _S),
        _f("shape", pa.list_(pa.int32()), False),
        _f("spacing", _L, False),
        _f("n_volumes", pa.int32(), False),
        _f("dtype", _S, False),
        _f("axcodes", _S, False),
        _f("oblique_deg", _L),
        _f("gain", _F, doc="intensity of a tissue of relative value 1"),
        _f("noise_level", _F, min=0, doc="Rician sigma relative to gain"),
        _f("noise_sigma", _F, min=0, doc="Rician sigma in stored intensity units"),
        _f("blur_fwhm_mm", _F, min=0),
        _f("ghost_amplitude", _F, min=0, max=1),
        _f("ghost_axis", pa.int32()),
        _f("gibbs_keep", _F, min=0, max=1, doc="fraction of k-space kept"),
        _f("gibbs_axis", pa.int32()),
        _f("bias_strength", _F, min=0),
        _f("deface", _S, allowed=("zero", "blur")),
        _f("skull_stripped", _B, False),
        _f("fov_crop", _F, min=0, max=1, doc="fraction of the head's top cut off"),
        _f("corruption", _S, allowed=("truncated", "nan", "zeros", "empty")),
        _f("has_nan", _B),
        _f("header_status", _S, False, allowed=HEADER_STATUSES),
        _f("size_bytes", _I, False),
        _f("ladder", _S),
        _f("ladder_level", pa.int32()),
        _f("dwi_shells", _S, doc="JSON {bval: n_directions}"),
        _f("dwi_n_b0", pa.int32()),
        _f("dwi_snr", _F),
        _f("bval_path", _S, doc="relative to the dataset root"),
        _f("bvec_path", _S),
        _f("sidecar", _S, doc="expected inherited sidecar (JSON)"),
        _f("is_brain_extracted", _B),
        _f("anat_mask_truth", _S),
        _f("anon_mask_truth", _S),
        _f("brain_mask_truth", _S),
        _f("fa_truth", _S),
        _f("md_truth", _S),
        _f("subject_seed", _I),
        _f("participants_style", _S),
        _f("age", _F),
        _f("age_raw", _S),
        _f("sex", _S, allowed=SEXES),
        _f("handedness", _S, allowed=HANDEDNESS),
        _f("weight", _F),
        _f("bmi", _F),
        _f("health_status", _S, allowed=("healthy", "patient")),
    ]
)

#: The preprocessed training store's ``store.parquet`` (`train.store`), one row
#: per manifest image, preprocessed or rejected.
STORE_INDEX = pa.schema(
    [
        _f("case_id", _S, False, doc="folder name under cases/"),
        _f("dataset_id", _S),
        _f("subject", _S),
        _f("split", _S, doc="the manifest's split: train or val"),
        _f("modality", _S),
        _f("shape", pa.list_(pa.int32()), doc="(D, H, W) of the stored arrays"),
        _f("spacing", pa.list_(pa.float64()), doc="mm, (D, H, W) order"),
        _f("has_anon", _B, doc="an anonymization mask is stored"),
        _f("status", _S, False, allowed=("ok", "rejected")),
        _f("reason", _S, doc="why a case was rejected"),
        _f("source", _S, doc="the image file it was made from"),
        _f(
            "anatomy",
            _S,
            allowed=("mask", "nonzero"),
            doc="where the anatomy region came from: the manifest's mask, or the "
            "nonzero voxels (no usable anatomy mask)",
        ),
    ]
)

#: The OpenMind release's ``openneuro_metadata.csv`` (`manifest.openmind_csv`),
#: one row per image; ``--format openmind-csv`` writes it with a ``split``
#: column at the end. The paths are relative to the corpus's ``OpenMind/`` folder.
OPENMIND_CSV = pa.schema(
    [
        _f(
            "image_path",
            _S,
            False,
            doc="DATASET/sub-XX/[ses-YY/]..., the first part the dataset id",
        ),
        _f("unique_id", _S, doc="the image's id, starting with its dataset id"),
        _f("modality", _S, False, doc="a modality group; unknown ones are read as 'other'"),
        _f("image_quality_score", _F, doc="the IQS (1 clean ... 5 unusable); empty if unrated"),
        _f("anon_mask_path", _S),
        _f("anat_mask_path", _S),
        _f("derived_from", _S, doc="unique_id of the source image (DWI maps)"),
        _f("is_brain_extract", _S, doc="True or False"),
        _f("age", _F, doc="years"),
        _f("sex", _S, doc="read by its first letter: M, F, else other"),
        _f("handedness", _S, doc="read by its first letter: R, L or A"),
        _f("race", _S),
        _f("weight", _F, doc="kg"),
        _f("bmi", _F),
        _f("health_status", _S),
        _f("manufacturer", _S),
        _f("model_name", _S),
        _f("phase_encoding_direction", _S),
        _f("magnetic_field_strength", _F),
        _f("repetition_time", _F, doc="seconds"),
        _f("echo_time", _F, doc="seconds"),
    ]
)

#: The scanner and sequence columns the OpenMind CSV and the image index share
#: under one name and type (nnssl's image_info carries them too).
ACQUISITION_COLUMNS: tuple[str, ...] = (
    "manufacturer",
    "model_name",
    "phase_encoding_direction",
    "magnetic_field_strength",
    "repetition_time",
    "echo_time",
)

SCHEMAS: dict[str, pa.Schema] = {
    "image_index": IMAGE_INDEX,
    "ratings": RATINGS,
    "iqs": IQS,
    "manifest": MANIFEST,
    "synth_truth": SYNTH_TRUTH,
    "problems": PROBLEMS,
    "metrics": METRICS,
    "store_index": STORE_INDEX,
    "openmind_csv": OPENMIND_CSV,
}


def _schema_name(schema: pa.Schema) -> str:
    for name, s in SCHEMAS.items():
        if s.equals(schema):
            return name
    return "table"


def _first_row(mask: pa.ChunkedArray | pa.Array) -> int:
    return int(pc.index(mask, True).as_py())


def validate(table: Any, schema: pa.Schema, *, extra: str = "error") -> pa.Table:
    """Check `table` (Arrow table or pandas DataFrame) against `schema`.

    Returns the table cast to the schema, columns in schema order. Raises
    `SchemaError` naming the first offending column and row. Columns the schema
    lacks are an error unless ``extra="drop"``.
    """
    name = _schema_name(schema)
    if not isinstance(table, pa.Table):
        table = _from_pandas(table, schema, name)
    present = set(table.column_names)
    for field in schema:
        if field.name not in present:
            raise SchemaError(name, field.name, "missing column")
    unknown = [c for c in table.column_names if c not in schema.names]
    if unknown and extra != "drop":
        raise SchemaError(name, unknown[0], "column not in the schema")
    columns = []
    for field in schema:
        col = table.column(field.name)
        col = _cast(name, field, col)
        _check_values(name, field, col)
        columns.append(col)
    return pa.Table.from_arrays(columns, schema=schema)


def _from_pandas(df: Any, schema: pa.Schema, name: str) -> pa.Table:
    """Convert column by column, so a bad cell is reported with its column and row."""
    arrays, names = [], []
    for col in df.columns:
        type_ = schema.field(col).type if col in schema.names else None
        try:
            arrays.append(pa.array(df[col], type=type_, from_pandas=True))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as exc:
            values = [None if isinstance(v, float) and math.isnan(v) else v for v in df[col]]
            row = _first_bad_value(values, type_) if type_ is not None else None
            raise SchemaError(name, str(col), f"cannot convert to {type_}: {exc}", row) from None
        names.append(str(col))
    return pa.Table.from_arrays(arrays, names=names)


def _cast(name: str, field: pa.Field, col: pa.ChunkedArray) -> pa.ChunkedArray:
    if col.type.equals(field.type):
        return col
    if pa.types.is_null(col.type):
        return pa.chunked_array([pa.nulls(len(col), field.type)])
    try:
        return col.cast(field.type, safe=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        row = _first_bad_value(col.to_pylist(), field.type)
        raise SchemaError(
            name, field.name, f"expected {field.type}, got {col.type} ({exc})", row
        ) from None


def _first_bad_value(values: list[Any], type_: pa.DataType) -> int | None:
    for i, value in enumerate(values):
        try:
            pa.array([value], type=type_)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, TypeError):
            return i
    return None


def _meta(field: pa.Field, key: str) -> Any:
    raw = (field.metadata or {}).get(key.encode())
    return None if raw is None else json.loads(raw)


def _check_values(name: str, field: pa.Field, col: pa.ChunkedArray) -> None:
    if not field.nullable and col.null_count:
        raise SchemaError(name, field.name, "null in a required column", _first_row(col.is_null()))
    allowed = _meta(field, "allowed")
    if allowed is not None:
        bad = pc.and_(col.is_valid(), pc.invert(pc.is_in(col, pa.array(allowed, col.type))))
        if pc.any(bad).as_py():
            row = _first_row(bad)
            raise SchemaError(
                name, field.name, f"value {col[row].as_py()!r} not one of {allowed}", row
            )
    for key, op in (("min", pc.less), ("max", pc.greater)):
        bound = _meta(field, key)
        if bound is None:
            continue
        bad = pc.fill_null(op(col, bound), False)
        if pc.any(bad).as_py():
            row = _first_row(bad)
            side = "below" if key == "min" else "above"
            value = col[row].as_py()
            raise SchemaError(name, field.name, f"value {value!r} is {side} {bound}", row)


def rows_to_table(
    rows: Iterable[dict[str, Any]], schema: pa.Schema, *, check_values: bool = True
) -> pa.Table:
    """Build a typed table from row dicts; absent keys become null, keys the
    schema lacks are ignored. With ``check_values=False`` only the types are
    enforced, for callers that `validate` the concatenation of many parts."""
    rows = list(rows)
    try:  # the fast path, in C++; the loop below exists to name a bad cell
        table = pa.Table.from_pylist(rows, schema=schema)
        return validate(table, schema) if check_values else table
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
        pass
    name = _schema_name(schema)
    arrays = []
    for field in schema:
        values = [r.get(field.name) for r in rows]
        try:
            arrays.append(pa.array(values, type=field.type))
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            row = _first_bad_value(values, field.type)
            raise SchemaError(name, field.name, f"cannot build {field.type}: {exc}", row) from None
    return validate(pa.Table.from_arrays(arrays, schema=schema), schema)


def row_problems(df: Any, schema: pa.Schema, limit: int = 1000) -> list[tuple[int, str, str]]:
    """Every bad cell of a pandas DataFrame, as (row, column, problem).

    `validate` stops at the first problem, which suits a stage's own output;
    a file a person wrote (a ratings import) deserves the whole list at once.
    """
    problems: list[tuple[int, str, str]] = []
    for field in schema:
        if field.name not in df.columns:
            problems.append((-1, field.name, "missing column"))
            continue
        values = [None if _is_missing(v) else v for v in df[field.name]]
        allowed, low, high = _meta(field, "allowed"), _meta(field, "min"), _meta(field, "max")
        for row, value in enumerate(values):
            problem = _cell_problem(field, value, allowed, low, high)
            if problem:
                problems.append((row, field.name, problem))
                if len(problems) >= limit:
                    return problems
    return problems


def _is_missing(value: Any) -> bool:
    try:
        return value is None or bool(value != value)  # NaN, NaT, pd.NA
    except (TypeError, ValueError):
        return False


def _cell_problem(field: pa.Field, value: Any, allowed, low, high) -> str | None:
    if value is None:
        return None if field.nullable else "empty, but required"
    try:
        scalar = pa.array([value]).cast(field.type, safe=True)[0].as_py()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, TypeError):
        return f"{value!r} is not a {field.type}"
    if allowed is not None and scalar not in allowed:
        return f"{scalar!r} is not one of {allowed}"
    if low is not None and scalar < low:
        return f"{scalar!r} is below {low}"
    if high is not None and scalar > high:
        return f"{scalar!r} is above {high}"
    return None
