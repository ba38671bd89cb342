"""The released OpenMind metadata CSV (``openneuro_metadata.csv``), read and written.

Layout (the OpenMind release on Hugging Face, and what nnssl's converter
``nnssl/dataset_conversion/Dataset001_OpenMind.py`` in MIC-DKFZ/nnssl reads):
one row per image, columns `COLUMNS`. ``image_path``, ``anat_mask_path`` and
``anon_mask_path`` are relative to the corpus's ``OpenMind/`` folder. The
first path component is the dataset id (also the first 8 characters of
``unique_id``), the second the subject (``sub-XX``), the third the session
when it starts with ``ses-`` (else the image has no session).
``image_quality_score`` is the IQS (lower is better).

`read` turns such a file into an image-index table (`schema.IMAGE_INDEX`,
absolute paths), so every manifest filter works on the released corpus;
`write` turns a manifest back into the layout, with an extra ``split``
column at the end (readers of the released layout look columns up by name).
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from openmind_curate.manifest.paths import rebase, relative_to
from openmind_curate.preflight import InputError
from openmind_curate.schema import IMAGE_INDEX, MODALITIES, SchemaError, validate

COLUMNS: tuple[str, ...] = (
    "image_path",
    "unique_id",
    "modality",
    "image_quality_score",
    "anon_mask_path",
    "anat_mask_path",
    "derived_from",
    "is_brain_extract",
    "age",
    "sex",
    "handedness",
    "race",
    "weight",
    "bmi",
    "health_status",
    "manufacturer",
    "model_name",
    "phase_encoding_direction",
    "magnetic_field_strength",
    "repetition_time",
    "echo_time",
)
_NUMBERS = (
    "image_quality_score",
    "age",
    "weight",
    "bmi",
    "magnetic_field_strength",
    "repetition_time",
    "echo_time",
)
_SAME = (
    "race",
    "health_status",
    "manufacturer",
    "model_name",
    "phase_encoding_direction",
    "magnetic_field_strength",
    "repetition_time",
    "echo_time",
    "age",
    "weight",
    "bmi",
    "derived_from",
)
_IMAGE_EXT = r"(?:\.nii\.gz|\.nii|\.nrrd|\.mha|\.b2nd)$"


def is_openmind_csv(path: str | os.PathLike[str]) -> bool:
    return str(path).lower().endswith((".csv", ".csv.gz"))


def corpus_root(csv_path: Path, root: Path | None, first_image: str | None) -> Path:
    """The folder the CSV's paths are relative to: `root` if given, else the
    CSV's folder, or its ``OpenMind/`` subfolder when the paths lie there
    (the Hugging Face download puts the CSV beside ``OpenMind/``)."""
    if root is not None:
        return Path(os.path.abspath(root))
    here = Path(os.path.abspath(csv_path)).parent
    sub = here / "OpenMind"
    if first_image and sub.is_dir() and not (here / first_image).exists():
        if (sub / first_image).exists():
            return sub
    return here


def read(csv_path: str | os.PathLike[str], root: str | os.PathLike[str] | None = None) -> pa.Table:
    """The CSV as an image index (`schema.IMAGE_INDEX`, absolute paths)."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise InputError(f"no OpenMind metadata CSV at {csv_path}")
    types = {c: pa.float64() if c in _NUMBERS else pa.string() for c in COLUMNS}
    try:
        raw = pacsv.read_csv(
            csv_path,
            convert_options=pacsv.ConvertOptions(column_types=types, strings_can_be_null=True),
        )
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"cannot read {csv_path} as the OpenMind metadata CSV: {exc}") from None
    missing = [c for c in ("image_path", "modality") if c not in raw.column_names]
    if missing:
        raise InputError(
            f"{csv_path} is not the OpenMind metadata CSV: no column "
            f"{', '.join(missing)} (expected {', '.join(COLUMNS)})"
        )
    n = raw.num_rows

    def col(name: str, type_: pa.DataType = pa.string()) -> pa.Array:
        if name in raw.column_names:
            return raw.column(name).combine_chunks().cast(type_)
        return pa.nulls(n, type_)

    image_path = pc.replace_substring(col("image_path"), "\\", "/")
    if image_path.null_count:
        raise InputError(f"{csv_path}: image_path is empty in row {_first(image_path.is_null())}")
    parts = pc.split_pattern(image_path, "/")
    short = pc.less(pc.list_value_length(parts), 3)
    if pc.any(short).as_py():
        row = _first(short)
        raise InputError(
            f"{csv_path}: row {row}: image_path {image_path[row].as_py()!r} is not "
            "DATASET/sub-XX/[ses-YY/]..."
        )
    dataset = pc.list_element(parts, 0)
    subject = pc.list_element(parts, 1)
    third = pc.list_element(parts, 2)
    base = corpus_root(csv_path, Path(root) if root else None, image_path[0].as_py() if n else None)
    base_s = str(base)
    rest = pc.replace_substring_regex(image_path, r"^[^/]*/", "", max_replacements=1)
    roots = rebase(pc.binary_join_element_wise(dataset, "", ""), base_s)
    name = pc.extract_regex(rest, r"(?P<n>[^/]*)$").field("n")
    suffix = pc.extract_regex(name, r"_(?P<s>[A-Za-z0-9]+)" + _IMAGE_EXT).field("s")
    ext = pc.extract_regex(name, r"(?P<e>" + _IMAGE_EXT[:-1] + r")$").field("e")
    modality = col("modality")
    known = pc.fill_null(pc.is_in(modality, pa.array(MODALITIES)), False)
    modality = pc.if_else(known, modality, "other")
    unique_id = col("unique_id")
    derived = col("derived_from")
    iqs = col("image_quality_score", pa.float64())
    columns: dict[str, pa.Array] = {
        "image_id": pc.coalesce(unique_id, image_path),
        "dataset_id": dataset,
        "subject": _strip(subject, "sub-"),
        "session": pc.if_else(pc.starts_with(third, "ses-"), _strip(third, "ses-"), None),
        "suffix": pc.coalesce(suffix, modality),
        "extension": pc.coalesce(ext, ""),
        "modality": modality,
        "is_derivative": pc.is_valid(derived),
        "root": roots,
        "path": rest,
        "size_bytes": pa.array([0] * n, pa.int64()),
        "header_status": pa.array(["ok"] * n, pa.string()),
        "sex": _letter(col("sex"), {"M": "M", "F": "F"}, "O"),
        "handedness": _letter(col("handedness"), {"R": "R", "L": "L", "A": "A"}, None),
        "is_brain_extracted": _truthy(col("is_brain_extract")),
        "anat_mask_path": rebase(col("anat_mask_path"), base_s),
        "anon_mask_path": rebase(col("anon_mask_path"), base_s),
        "iqs": iqs,
    }
    for c in _SAME:
        columns[c] = col(c, IMAGE_INDEX.field(c).type)
    for c in ("age", "weight", "bmi"):  # a negative or absurd value is unknown, not an error
        field = IMAGE_INDEX.field(c)
        high = 130 if c == "age" else None
        bad = pc.less(columns[c], 0)
        if high is not None:
            bad = pc.or_(bad, pc.greater(columns[c], high))
        columns[c] = pc.if_else(pc.fill_null(bad, False), pa.scalar(None, field.type), columns[c])
    arrays = [columns.get(f.name, pa.nulls(n, f.type)) for f in IMAGE_INDEX]
    try:
        return validate(pa.Table.from_arrays(arrays, names=IMAGE_INDEX.names), IMAGE_INDEX)
    except SchemaError as exc:
        raise InputError(f"{csv_path}: {exc}") from None


def _first(mask: pa.Array) -> int:
    return int(pc.index(mask, True).as_py())


def _strip(values: pa.Array, prefix: str) -> pa.Array:
    return pc.replace_substring_regex(values, "^" + prefix, "", max_replacements=1)


def _letter(values: pa.Array, known: dict[str, str], other: str | None) -> pa.Array:
    first = pc.utf8_upper(pc.utf8_slice_codeunits(pc.utf8_trim_whitespace(values), 0, 1))
    out = pa.array([None] * len(values), pa.string())
    for letter, value in known.items():
        out = pc.if_else(pc.fill_null(pc.equal(first, letter), False), value, out)
    if other is not None:
        present = pc.fill_null(pc.not_equal(first, ""), False)
        out = pc.if_else(pc.and_(pc.is_null(out), present), other, out)
    return out


def _truthy(values: pa.Array) -> pa.Array:
    low = pc.utf8_lower(pc.utf8_trim_whitespace(values))
    yes = pc.is_in(low, pa.array(["true", "1", "1.0", "yes", "y", "t"]))
    return pc.if_else(pc.is_null(values), pa.scalar(None, pa.bool_()), yes)


# ----------------------------------------------------------------------- write


def corpus_base(table: pa.Table) -> str:
    """The one folder holding every dataset root as ``<folder>/<dataset_id>``.

    The layout's first path component is the dataset id, so the export needs
    that shape; an index whose roots lie in several folders (e.g. DWI maps
    under their own output folder) cannot be written as one such CSV."""
    pairs = pc.unique(
        pc.binary_join_element_wise(table.column("root"), table.column("dataset_id"), "\x00")
    ).to_pylist()
    parents, wrong = set(), []
    for pair in pairs:
        root, dataset_id = pair.split("\x00")
        if os.path.basename(root) != dataset_id:
            wrong.append(f"{root} (dataset {dataset_id})")
        parents.add(os.path.dirname(root))
    if wrong:
        raise InputError(
            "--format openmind-csv needs each dataset's root folder to be named after its "
            f"dataset id (the layout's first path component); not so for: {', '.join(wrong[:3])}"
        )
    if len(parents) > 1:
        listed = ", ".join(sorted(parents)[:4])
        raise InputError(
            "--format openmind-csv needs every dataset root in one folder (the layout's "
            f"OpenMind/ folder); these images lie under {len(parents)} folders: {listed}. "
            "Filter to one of them (e.g. --exclude-modality FA,MD for DWI maps written "
            "elsewhere) or use --format parquet"
        )
    return parents.pop() if parents else os.getcwd()


def unique_ids(table: pa.Table) -> pa.Array:
    """``unique_id``: the image_id when it starts with the dataset id (an id
    read from this layout), else ``<dataset_id>_<image_id>``."""
    ids, ds = table.column("image_id"), table.column("dataset_id")
    prefixed = pc.binary_join_element_wise(ds, ids, "_")
    keep = pa.array(
        [i.startswith(d) for i, d in zip(ids.to_pylist(), ds.to_pylist(), strict=True)], pa.bool_()
    )
    return pc.if_else(keep, ids, prefixed)


def to_layout(table: pa.Table, base: str) -> pa.Table:
    """A manifest (absolute paths) as the layout's columns, paths relative to
    `base`, the corpus folder (`corpus_base`)."""
    image_path = pc.binary_join_element_wise(table.column("dataset_id"), table.column("path"), "/")
    brain = table.column("is_brain_extracted")
    columns = {
        "image_path": image_path,
        "unique_id": unique_ids(table),
        "modality": table.column("modality"),
        "image_quality_score": table.column("iqs"),
        "anon_mask_path": relative_to(table.column("anon_mask_path"), base),
        "anat_mask_path": relative_to(table.column("anat_mask_path"), base),
        "derived_from": table.column("derived_from"),
        "is_brain_extract": pc.if_else(brain, "True", "False"),
    }
    for c in COLUMNS:
        if c not in columns:
            columns[c] = table.column(c)
    names = [*COLUMNS, "split"]
    values = [columns[c] for c in COLUMNS] + [table.column("split")]
    return pa.Table.from_arrays(
        [v.combine_chunks() if isinstance(v, pa.ChunkedArray) else v for v in values], names=names
    )


def write_csv(layout: pa.Table, path: str | os.PathLike[str]) -> None:
    """The layout as CSV: a plain header line (as pandas writes it), values
    quoted only where needed."""
    with open(path, "wb") as fh:
        fh.write((",".join(layout.column_names) + "\n").encode())
        options = pacsv.WriteOptions(include_header=False, quoting_style="needed")
        pacsv.write_csv(layout, fh, options)
