"""Stable identifiers shared by every stage."""

from __future__ import annotations

import hashlib
import os
import zlib
from collections import Counter
from collections.abc import Sequence


def image_id(dataset_id: str, rel_path: str) -> str:
    """Stable image id: a hash of the dataset id and the POSIX path relative to
    the row's root, so it survives moving the corpus to another machine.

    Every index row follows this rule, derived rows too: a DWI map row has the
    source's dataset_id and its path relative to its derivatives folder
    (``OUT/<dataset_id>``), so any row's id can be recomputed from the row."""
    key = f"{dataset_id}/{rel_path.replace(chr(92), '/').lstrip('/')}"
    return hashlib.sha1(key.encode("utf-8")).hexdigest()[:16]


def stable_int(*parts: object) -> int:
    """A deterministic 32-bit integer from any printable parts (for seeding)."""
    return zlib.crc32("/".join(map(str, parts)).encode("utf-8"))


def dataset_ids(datasets: Sequence[tuple[str, str]]) -> list[str]:
    """Ids for top-level datasets, given as (absolute folder, crawl root it was found under).

    The id is the folder name. Names found more than once get a suffix from
    where each lies relative to its crawl root: ``ds1~siteA`` for
    ``ROOT/siteA/ds1``; for a dataset that is a crawl root, or sits directly
    in one, the name of the folder holding it (``ds1~a`` for ``/a/ds1``).
    Only the paths decide, never the order of roots or of the crawl. Two
    copies that still collide (same name under same-named folders) are
    numbered ``~2``, ``~3`` in order of their full path.
    """
    names = [os.path.basename(path) for path, _ in datasets]
    counts = Counter(names)
    ids = []
    for (path, root), name in zip(datasets, names, strict=True):
        if counts[name] == 1:
            ids.append(name)
            continue
        holder = os.path.dirname(path)
        rel = os.path.relpath(holder, root)
        if rel == "." or rel.startswith(".."):
            rel = os.path.basename(holder)
        ids.append(f"{name}~{rel.replace(os.sep, '-').replace('/', '-')}")
    again = Counter(ids)
    if len(again) < len(ids):
        order = sorted(range(len(ids)), key=lambda k: datasets[k][0])
        seen: Counter[str] = Counter()
        for k in order:
            if again[ids[k]] > 1:
                seen[ids[k]] += 1
                if seen[ids[k]] > 1:
                    ids[k] = f"{ids[k]}~{seen[ids[k]]}"
    return ids
