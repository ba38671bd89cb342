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
`read_stored` leaves the paths as the file has them (the manifest build
resolves only the rows it keeps). `to_layout` and `write_csv` turn a
manifest back into the layout, with an extra ``split`` column at the end
(readers of the released layout look columns up by name). The file is read
in one pass of Arrow kernels, on one thread: the release's 113,921 rows
parse in about 0.1 CPU-s, less than a thread pool's start costs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from openmind_curate.errors import InputError
from openmind_curate.paths import rebase_table, relative_to
from openmind_curate.schema import (
    ACQUISITION_COLUMNS,
    IMAGE_INDEX,
    MODALITIES,
    OPENMIND_CSV,
    SchemaError,
    validate,
)

#: The release's columns, in its order (`schema.OPENMIND_CSV`).
COLUMNS: tuple[str, ...] = tuple(OPENMIND_CSV.names)
#: Columns taken over as they are (cast to the index's type).
_SAME = ("race", "health_status", *ACQUISITION_COLUMNS, "age", "weight", "bmi", "derived_from")
_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".mha", ".b2nd")
_SUFFIX = r"_(?P<s>[A-Za-z0-9]+)(?:\.nii\.gz|\.nii|\.nrrd|\.mha|\.b2nd)$"


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
    table, base = read_stored(csv_path, root)
    return rebase_table(table, base)


def read_stored(
    csv_path: str | os.PathLike[str], root: str | os.PathLike[str] | None = None
) -> tuple[pa.Table, str]:
    """The CSV as an image index whose path columns are as in the file
    (``root`` is the dataset id), and the corpus folder they are relative to
    (`corpus_root`)."""
    release = Release.open(csv_path, root)
    return release.index_rows(), release.base


@dataclass(frozen=True)
class Release:
    """The file's cells, read and checked once. `build-manifest` filters on
    `probe` (a few cheap columns of every row) and derives the index rows of
    the rows it keeps only (`index_rows`)."""

    path: Path
    raw: pa.Table  # typed as schema.OPENMIND_CSV
    image_path: pa.ChunkedArray  # POSIX separators, every row DATASET/sub-XX/...
    base: str  # the corpus folder the paths are relative to

    @classmethod
    def open(
        cls, csv_path: str | os.PathLike[str], root: str | os.PathLike[str] | None = None
    ) -> Release:
        csv_path = Path(csv_path)
        raw = _read_raw(csv_path)
        image_path = _image_paths(raw, csv_path)
        first = image_path[0].as_py() if len(image_path) else None
        base = str(corpus_root(csv_path, Path(root) if root else None, first))
        return cls(csv_path, raw, image_path, base)

    def probe(self) -> pa.Table:
        """Every row's image_id, dataset_id, modality, header status, masks and
        scores (`schema.IMAGE_INDEX` fields): what the manifest filters test."""
        n = self.raw.num_rows
        parts = pc.split_pattern(self.image_path, "/", max_splits=1)
        columns = {
            "image_id": pc.coalesce(_col(self.raw, "unique_id"), self.image_path),
            "dataset_id": pc.list_element(parts, 0),
            "modality": _modality(self.raw),
            "header_status": pa.repeat("ok", n),
            **{c: _col(self.raw, c) for c in ("anat_mask_path", "anon_mask_path")},
            "iqs": _col(self.raw, "image_quality_score"),
        }
        names = [f.name for f in IMAGE_INDEX if f.name in columns or f.name in _UNKNOWN]
        arrays = [
            columns[c] if c in columns else pa.nulls(n, IMAGE_INDEX.field(c).type) for c in names
        ]
        return pa.Table.from_arrays(arrays, schema=pa.schema([IMAGE_INDEX.field(c) for c in names]))

    def index_rows(self, keep: pa.Array | None = None) -> pa.Table:
        """The rows `keep` selects (all if None) as `schema.IMAGE_INDEX`,
        path columns as in the file."""
        raw, image_path = self.raw, self.image_path
        if keep is not None:
            raw, image_path = raw.filter(keep), image_path.filter(keep)
        columns = {**_from_path(image_path), **_from_columns(raw, image_path)}
        columns["suffix"] = pc.coalesce(columns["suffix"], columns["modality"])
        n = raw.num_rows
        columns["size_bytes"] = pa.array(np.zeros(n, np.int64))
        columns["header_status"] = pa.repeat("ok", n)
        arrays = [
            columns[f.name] if f.name in columns else pa.nulls(n, f.type) for f in IMAGE_INDEX
        ]
        try:
            return validate(pa.Table.from_arrays(arrays, names=IMAGE_INDEX.names), IMAGE_INDEX)
        except SchemaError as exc:
            raise InputError(f"{self.path}: {exc}") from None


#: Index columns the release does not have, which the filters may test.
_UNKNOWN = ("n_volumes", "spacing", "iqs_image", "iqs_predicted")


def _read_raw(csv_path: Path) -> pa.Table:
    """The file's cells, typed as `schema.OPENMIND_CSV` (empty cells null)."""
    if not csv_path.is_file():
        raise InputError(f"no OpenMind metadata CSV at {csv_path}")
    types = {f.name: f.type for f in OPENMIND_CSV}
    try:  # one thread (module docstring)
        raw = pacsv.read_csv(
            csv_path,
            read_options=pacsv.ReadOptions(use_threads=False),
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
    return raw


def _col(raw: pa.Table, name: str, type_: pa.DataType | None = None) -> pa.ChunkedArray:
    """Column `name` as `type_` (its OPENMIND_CSV type); all null if absent."""
    type_ = type_ or OPENMIND_CSV.field(name).type
    if name not in raw.column_names:
        return pa.chunked_array([pa.nulls(raw.num_rows, type_)])
    col = raw.column(name)
    return col if col.type == type_ else col.cast(type_)


def _image_paths(raw: pa.Table, csv_path: Path) -> pa.ChunkedArray:
    """``image_path`` with POSIX separators, every row DATASET/sub-XX/..."""
    image_path = _col(raw, "image_path")
    if _may_hold(image_path, b"\\"):  # Windows separators (a scan of the bytes, no copy per value)
        image_path = pc.replace_substring(image_path, "\\", "/")
    if image_path.null_count:
        raise InputError(f"{csv_path}: image_path is empty in row {_first(image_path.is_null())}")
    short = pc.less(pc.count_substring(image_path, "/"), 2)
    if pc.any(short).as_py():
        row = _first(short)
        raise InputError(
            f"{csv_path}: row {row}: image_path {image_path[row].as_py()!r} is not "
            "DATASET/sub-XX/[ses-YY/]..."
        )
    return image_path


def _may_hold(values: pa.ChunkedArray, byte: bytes) -> bool:
    """Whether a value of the string column may hold `byte`: a search of its
    data buffers (which may hold bytes outside the values: then the caller
    does a little needless work, never wrong work)."""
    return any(
        chunk.buffers()[2] is not None and byte in memoryview(chunk.buffers()[2]).tobytes()
        for chunk in values.chunks
    )


def _from_path(image_path: pa.ChunkedArray) -> dict[str, pa.ChunkedArray]:
    """The index columns an image's path gives: dataset, subject, session,
    root (the dataset id, relative to the corpus folder), path, suffix, extension."""
    parts = pc.split_pattern(image_path, "/", max_splits=1)  # DATASET, the rest
    head, rest = pc.list_element(parts, 0), pc.list_element(parts, 1)
    parts = pc.split_pattern(rest, "/", max_splits=2)  # sub-XX, ses-YY or more, ...
    subject, third = pc.list_element(parts, 0), pc.list_element(parts, 1)
    extension = pa.nulls(len(image_path), pa.string())
    for ext in reversed(_EXTENSIONS):  # the first that matches wins: .nii.gz before .nii
        extension = pc.if_else(pc.ends_with(image_path, ext), ext, extension)
    return {
        "dataset_id": head,
        "subject": _strip(subject, "sub-"),
        "session": pc.if_else(pc.starts_with(third, "ses-"), _strip(third, "ses-"), None),
        "root": head,
        "path": rest,
        "suffix": pc.struct_field(pc.extract_regex(image_path, _SUFFIX), "s"),
        "extension": pc.coalesce(extension, ""),
    }


def _from_columns(raw: pa.Table, image_path: pa.ChunkedArray) -> dict[str, pa.ChunkedArray]:
    """The index columns the CSV's other columns give, harmonized."""
    modality = _modality(raw)
    derived = _col(raw, "derived_from")
    columns: dict[str, pa.ChunkedArray] = {
        "image_id": pc.coalesce(_col(raw, "unique_id"), image_path),
        "modality": modality,
        "is_derivative": pc.is_valid(derived),
        "sex": _letter(_col(raw, "sex"), {"M": "M", "F": "F"}, "O"),
        "handedness": _letter(_col(raw, "handedness"), {"R": "R", "L": "L", "A": "A"}, None),
        "is_brain_extracted": _truthy(_col(raw, "is_brain_extract")),
        "anat_mask_path": _col(raw, "anat_mask_path"),
        "anon_mask_path": _col(raw, "anon_mask_path"),
        "iqs": _col(raw, "image_quality_score"),
    }
    for c in _SAME:
        columns[c] = _col(raw, c, IMAGE_INDEX.field(c).type)
    for c in ("age", "weight", "bmi"):  # a negative or absurd value is unknown, not an error
        bad = pc.less(columns[c], 0)
        if c == "age":
            bad = pc.or_(bad, pc.greater(columns[c], 130))
        columns[c] = pc.if_else(pc.fill_null(bad, False), None, columns[c])
    return columns


def _modality(raw: pa.Table) -> pa.ChunkedArray:
    """The modality column, a group the index does not know read as ``other``."""
    modality = _col(raw, "modality")
    known = pc.fill_null(pc.is_in(modality, pa.array(MODALITIES)), False)
    return pc.if_else(known, modality, "other")


def _first(mask: pa.ChunkedArray) -> int:
    return int(pc.index(mask, True).as_py())


def _strip(values: pa.ChunkedArray, prefix: str) -> pa.ChunkedArray:
    return pc.if_else(
        pc.starts_with(values, prefix), pc.utf8_slice_codeunits(values, len(prefix)), values
    )


def _per_value(values: pa.ChunkedArray, fn: Callable[[pa.Array], pa.Array]) -> pa.Array:
    """`fn` of each distinct value, spread back over the rows: a coded column
    (sex, handedness, a flag) has a handful of values over 100k rows."""
    distinct = pc.unique(values)
    return fn(distinct).take(pc.index_in(values, value_set=distinct))


def _letter(values: pa.ChunkedArray, known: dict[str, str], other: str | None) -> pa.Array:
    """``male``/``M``/`` m`` -> ``M``: the first letter, if `known`, else `other`."""

    def code(distinct: pa.Array) -> pa.Array:
        first = pc.utf8_upper(pc.utf8_slice_codeunits(pc.utf8_trim_whitespace(distinct), 0, 1))
        out = pa.nulls(len(distinct), pa.string())
        for letter, value in known.items():
            out = pc.if_else(pc.fill_null(pc.equal(first, letter), False), value, out)
        if other is not None:
            present = pc.fill_null(pc.not_equal(first, ""), False)
            out = pc.if_else(pc.and_(pc.is_null(out), present), other, out)
        return out

    return _per_value(values, code)


def _truthy(values: pa.ChunkedArray) -> pa.Array:
    def truth(distinct: pa.Array) -> pa.Array:
        low = pc.utf8_lower(pc.utf8_trim_whitespace(distinct))
        yes = pc.is_in(low, pa.array(["true", "1", "1.0", "yes", "y", "t"]))
        return pc.if_else(pc.is_null(distinct), pa.scalar(None, pa.bool_()), yes)

    return _per_value(values, truth)


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
            "Filter to one of them (e.g. --exclude-modalities FA,MD for DWI maps written "
            "elsewhere) or use --format parquet"
        )
    return parents.pop() if parents else os.getcwd()


def unique_ids(table: pa.Table) -> pa.ChunkedArray:
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
