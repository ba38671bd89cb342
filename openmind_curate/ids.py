"""Stable identifiers shared by every stage."""

from __future__ import annotations

import hashlib
import zlib


def image_id(dataset_id: str, rel_path: str) -> str:
    """Stable image id: a hash of the dataset id and the POSIX path relative to
    the dataset root, so it survives moving the corpus to another machine."""
    key = f"{dataset_id}/{rel_path.replace(chr(92), '/').lstrip('/')}"
    return hashlib.sha1(key.encode("utf-8")).hexdigest()[:16]


def stable_int(*parts: object) -> int:
    """A deterministic 32-bit integer from any printable parts (for seeding)."""
    return zlib.crc32("/".join(map(str, parts)).encode("utf-8"))
