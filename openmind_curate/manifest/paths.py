"""Path columns moved between bases, fast enough for 100k-row tables.

The index stores ``root``, ``anat_mask_path`` and ``anon_mask_path`` relative
to the index's folder; a manifest stores them relative to its own folder. With
every mask path distinct, an ``os.path`` call per value costs about half a
second at the corpus's scale, so these work on whole Arrow columns:

- `to_absolute`: a column with few distinct values (roots) maps each once;
  otherwise a stored path is some leading ``../`` parts and a rest, and the
  folder those parts lead to is computed once per count of them;
- `relative_to`: one pass per ancestor of the target folder, deepest first
  (the longest common prefix wins), as ``os.path.relpath`` would.

Values of another shape (``.`` or ``..`` inside, ``//``) take the exact,
slow way, so the result always equals ``os.path``'s (tests check it).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

#: Columns holding a path to a file or folder, relative to the table's base when stored.
PATH_COLUMNS = ("root", "anat_mask_path", "anon_mask_path")

_ODD = r"(^|/)\.\.?(/|$)|^$|//"


def _exact(value: str | None, base: str, to: str | None) -> str | None:
    """One value: relative to `base` -> absolute (`to` None) or relative to `to`."""
    if value is None:
        return None
    absolute = os.path.normpath(os.path.join(base, value))
    if to is None:
        return absolute
    return Path(os.path.relpath(absolute, to)).as_posix()


def _chunk(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    return col.cast(pa.string())


def _fix_odd(out: pa.Array, col: pa.Array, odd: pa.Array, base: str, to: str | None) -> pa.Array:
    if not pc.any(odd).as_py():
        return out
    values, originals = out.to_pylist(), col.to_pylist()
    for i in pc.indices_nonzero(odd).to_pylist():
        values[i] = _exact(originals[i], base, to)
    return pa.array(values, pa.string())


def _odd(rest: pa.Array) -> pa.Array:
    """Rests that are not a clean relative path (``.``/``..`` parts, ``//``, empty)."""
    return pc.match_substring_regex(rest, _ODD)


def to_absolute(col: pa.ChunkedArray | pa.Array, base: str) -> pa.Array:
    """Paths relative to folder `base` made absolute (normal); absolute ones
    kept; nulls stay null."""
    col = _chunk(col)
    base = os.path.normpath(os.path.abspath(base))
    n = len(col)
    if n == 0:
        return col
    distinct = pc.unique(col)
    if len(distinct) <= max(64, n // 8):  # e.g. roots: one os.path call per value
        mapped = pa.array([_exact(v, base, None) for v in distinct.to_pylist()], pa.string())
        return mapped.take(pc.index_in(col, value_set=distinct))
    absolute = pc.fill_null(pc.starts_with(col, "/"), False)
    out, odd = pa.nulls(n, pa.string()), pa.array(np.zeros(n, bool))
    if pc.any(absolute).as_py():
        out = pc.if_else(absolute, col, out)
        odd = pc.and_(absolute, _odd(col))
    todo = pc.and_(col.is_valid(), pc.invert(absolute))
    k = 0
    while k <= 256 and pc.any(todo).as_py():  # k: how many leading "../"
        ups = "../" * k
        rest = pc.utf8_slice_codeunits(col, len(ups))
        here = pc.and_(todo, pc.invert(pc.starts_with(rest, "../")))
        if k:
            here = pc.and_(here, pc.starts_with(col, ups))
        if pc.any(here).as_py():
            prefix = os.path.normpath(os.path.join(base, ups or "."))
            joined = pc.binary_join_element_wise(prefix.rstrip("/"), rest, "/")
            out = pc.if_else(here, joined, out)
            odd = pc.or_(odd, pc.and_(here, _odd(rest)))
            todo = pc.and_(todo, pc.invert(here))
        k += 1
    odd = pc.or_(odd, todo)  # (never: a path with 257 leading "../")
    return _fix_odd(out, col, pc.fill_null(odd, False), base, None)


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
        tail = pc.utf8_slice_codeunits(col, len(head))
        ups = "../" * k
        out = pc.if_else(inside, pc.binary_join_element_wise(ups, tail, ""), out)
        out = pc.if_else(exact, (ups.rstrip("/") or "."), out)
        todo = pc.and_(todo, pc.invert(pc.or_(inside, exact)))
    # not absolute (or not normal): the exact way
    odd = pc.and_(col.is_valid(), out.is_null())
    odd = pc.or_(odd, pc.fill_null(pc.match_substring_regex(col, r"(^|/)\.\.?(/|$)|//"), False))
    odd = pc.and_(odd, col.is_valid())
    return _fix_odd(out, col, odd, to, to)


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
