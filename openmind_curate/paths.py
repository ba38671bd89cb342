"""Path columns, moved between bases: the one definition for every table.

The image index stores its `PATH_COLUMNS` relative to its own folder and a
parquet manifest relative to its own (``path`` is relative to ``root``), so a
moved tree stays valid; in memory they are absolute. Two forms:

- one value (`absolute_path`, `stored_path`): an ``os.path`` call, for the
  crawl's few dataset roots;
- whole Arrow columns (`to_absolute`, `relative_to`, `rebase`,
  `rebase_table`): with every mask path distinct, an ``os.path`` call per
  value costs about half a second at the corpus's scale, so these work in a
  few passes over the column. `to_absolute` joins a clean relative value to
  the folder its leading ``../`` parts lead to (computed once per count of
  them); `relative_to` makes one pass per ancestor of the target folder,
  deepest first (the longest common prefix wins), as ``os.path.relpath``
  would.

Values of another shape (``.`` or ``..`` inside, ``//``, empty) take the
exact way, one ``os.path`` call each, so a column's result always equals the
one-value form's (tests check it).
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from openmind_curate.schema import PATH_COLUMNS

__all__ = [
    "PATH_COLUMNS",
    "absolute_path",
    "stored_path",
    "to_absolute",
    "relative_to",
    "rebase",
    "rebase_table",
]

#: Values that are not a clean path: a ``.`` or ``..`` part inside, ``//``, or empty.
_ODD = r"(^|/)\.\.?(/|$)|^$|//"
#: Leading ``../`` parts followed more deeply than this take the exact way.
_MAX_UPS = 64


def absolute_path(path: str | None, base: str) -> str | None:
    """A path relative to folder `base` (or absolute) made absolute and normal."""
    if path is None:
        return None
    return os.path.normpath(os.path.join(base, path))


def stored_path(path: str | None, base: str) -> str | None:
    """A path as stored: relative to folder `base`, POSIX separators. A
    relative `path` is taken relative to the working folder."""
    if path is None:
        return None
    return Path(os.path.relpath(os.path.abspath(path), base)).as_posix()


def _exact(value: str | None, base: str, to: str | None) -> str | None:
    """One value: relative to `base` -> absolute (`to` None) or relative to `to`."""
    absolute = absolute_path(value, base)
    if to is None or absolute is None:
        return absolute
    return Path(os.path.relpath(absolute, to)).as_posix()


def _chunk(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    return col.cast(pa.string())


def _fix_odd(out: pa.Array, col: pa.Array, odd: pa.Array, base: str, to: str | None) -> pa.Array:
    """`out` with the `odd` rows of `col` converted the exact way."""
    odd = pc.fill_null(odd, False)
    if not pc.any(odd).as_py():
        return out
    values, originals = out.to_pylist(), col.to_pylist()
    for i in pc.indices_nonzero(odd).to_pylist():
        values[i] = _exact(originals[i], base, to)
    return pa.array(values, pa.string())


def _join(folder: str, rest: pa.Array) -> pa.Array:
    return pc.binary_join_element_wise(folder.rstrip("/"), rest, "/")


def to_absolute(col: pa.ChunkedArray | pa.Array, base: str) -> pa.Array:
    """Paths relative to folder `base` made absolute (normal); absolute ones
    kept; nulls stay null."""
    col = _chunk(col)
    base = os.path.normpath(os.path.abspath(base))
    if len(col) == 0:
        return col
    absolute = pc.starts_with(col, "/")
    todo = pc.fill_null(pc.starts_with(col, "../"), False)
    odd = pc.and_(pc.invert(todo), pc.match_substring_regex(col, _ODD))
    out = _join(base, col)
    if pc.any(absolute).as_py():
        out = pc.if_else(absolute, col, out)
    k = 1
    while k <= _MAX_UPS and pc.any(todo).as_py():  # values with k leading "../"
        rest = pc.utf8_slice_codeunits(col, 3 * k)
        here = pc.and_(todo, pc.invert(pc.starts_with(rest, "../")))
        if pc.any(here).as_py():
            folder = os.path.normpath(os.path.join(base, "../" * k))
            out = pc.if_else(here, _join(folder, rest), out)
            odd = pc.or_(odd, pc.and_(here, pc.match_substring_regex(rest, _ODD)))
            todo = pc.and_(todo, pc.invert(here))
        k += 1
    return _fix_odd(out, col, pc.or_(odd, todo), base, None)


def relative_to(col: pa.ChunkedArray | pa.Array, to: str) -> pa.Array:
    """Normal absolute paths made relative to folder `to` (POSIX, like
    ``os.path.relpath``): one pass per ancestor of `to`, deepest first."""
    col = _chunk(col)
    to = os.path.normpath(os.path.abspath(to))
    out = pa.nulls(len(col), pa.string())
    todo = pc.fill_null(pc.starts_with(col, "/"), False)
    ancestors, folder = [], to
    while True:
        ancestors.append(folder)
        if folder == os.path.dirname(folder):
            break
        folder = os.path.dirname(folder)
    for k, folder in enumerate(ancestors):
        if not pc.any(todo).as_py():
            break
        head = folder.rstrip("/") + "/"
        inside = pc.and_(todo, pc.starts_with(col, head))
        exact = pc.and_(todo, pc.equal(col, folder))
        ups = "../" * k
        n_inside = pc.sum(inside).as_py() or 0
        if n_inside:
            tail = pc.utf8_slice_codeunits(col, len(head))
            value = pc.binary_join_element_wise(ups, tail, "")
            # every path under one folder (the usual case): no merge needed
            whole = n_inside == len(col) - col.null_count and out.null_count == len(out)
            out = value if whole else pc.if_else(inside, value, out)
        if pc.any(exact).as_py():
            out = pc.if_else(exact, ups.rstrip("/") or ".", out)
        todo = pc.and_(todo, pc.invert(pc.or_(inside, exact)))
    # not absolute (or not normal): the exact way
    odd = pc.and_(col.is_valid(), out.is_null())
    odd = pc.or_(odd, pc.fill_null(pc.match_substring_regex(col, r"(^|/)\.\.?(/|$)|//"), False))
    return _fix_odd(out, col, pc.and_(odd, col.is_valid()), to, to)


def rebase(col: pa.ChunkedArray | pa.Array, base: str, to: str | None = None) -> pa.Array:
    """Paths relative to folder `base` made absolute (`to` None) or relative
    to folder `to`. Both folders are absolute; nulls stay null."""
    absolute = to_absolute(col, base)
    return absolute if to is None else relative_to(absolute, to)


def rebase_table(
    table: pa.Table, base: str, to: str | None = None, columns=PATH_COLUMNS
) -> pa.Table:
    """`table` with its path `columns` rebased (`rebase`); fields kept."""
    for name in columns:
        if name not in table.column_names:
            continue
        i = table.column_names.index(name)
        table = table.set_column(i, table.schema.field(i), rebase(table.column(name), base, to))
    return table
