"""Tables a user hands to a command (CSV, TSV or parquet), read one way.

Every problem is an `InputError` of one shape, ``<what> <file>: <problem>``
(``IQS table /data/iqs.csv: no column iqs (...)``), so a user reads the same
kind of line whichever command refused the file. Parsing is Arrow's (no
pandas import for a command that does not need it); `read_frame` hands a
pandas DataFrame to the commands that work on one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from openmind_curate.errors import InputError
from openmind_curate.schema import SchemaError, validate

if TYPE_CHECKING:
    import pandas as pd

CSV_SUFFIXES = (".csv", ".csv.gz")
TSV_SUFFIXES = (".tsv", ".tsv.gz")


def problem(what: str, path: str | os.PathLike[str], text: str) -> InputError:
    """The one message shape: ``<what> <file>: <problem>``."""
    return InputError(f"{what} {path}: {text}")


def _kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(CSV_SUFFIXES):
        return "CSV"
    return "TSV" if name.endswith(TSV_SUFFIXES) else "parquet"


def _parse(path: Path, what: str, types: dict[str, pa.DataType]) -> pa.Table:
    kind = _kind(path)
    try:
        if kind == "parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path)
        import pyarrow.csv as pacsv

        return pacsv.read_csv(
            path,
            parse_options=pacsv.ParseOptions(
                delimiter="," if kind == "CSV" else "\t", newlines_in_values=True
            ),
            convert_options=pacsv.ConvertOptions(column_types=types, strings_can_be_null=True),
        )
    except (OSError, pa.ArrowException, UnicodeDecodeError) as exc:
        other = kind == "parquet" and not path.name.lower().endswith(".parquet")
        hint = " (give a .csv, .tsv or .parquet file)" if other else ""
        raise problem(what, path, f"cannot read it as {kind} ({exc}){hint}") from None


def read_table(
    path: str | os.PathLike[str],
    what: str,
    columns: Sequence[str] = (),
    *,
    schema: pa.Schema | None = None,
    hint: str = "",
) -> pa.Table:
    """The user's table at `path` (``.csv``/``.tsv``, optionally gzipped, else
    parquet), checked: the file exists, parses, and has `columns`.

    With `schema`, the file's columns that it names are typed by it (an id
    like ``0042`` stays text), and only those are returned, validated against
    it (ranges, allowed values). `hint` follows a message about a missing
    file or column, e.g. ``(write it with `curate iqs`)``.
    """
    path = Path(path)
    tail = f" {hint}" if hint else ""
    if not path.exists():
        raise problem(what, path, f"file not found{tail}")
    if path.is_dir():
        raise problem(what, path, "a folder, not a file")
    types = {f.name: f.type for f in schema} if schema is not None else {}
    table = _parse(path, what, types)
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        have = ", ".join(table.column_names[:12]) or "none"
        raise problem(what, path, f"no column {', '.join(missing)} (it has {have}){tail}")
    if schema is None:
        return table
    present = pa.schema([f for f in schema if f.name in table.column_names])
    try:
        return validate(table.select(present.names), present)
    except SchemaError as exc:
        raise problem(what, path, str(exc).split(": ", 1)[-1]) from None


def read_frame(
    path: str | os.PathLike[str], what: str, columns: Sequence[str] = (), **options: Any
) -> pd.DataFrame:
    """`read_table` (the same arguments: `schema`, `hint`) as a pandas DataFrame."""
    return read_table(path, what, columns, **options).to_pandas()
