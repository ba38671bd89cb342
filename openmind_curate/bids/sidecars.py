"""The BIDS inheritance principle for JSON sidecars and ``.bval``/``.bvec``.

A metadata file applies to an image when it sits in the image's folder or an
ancestor up to the dataset root, has the same suffix, and its entities are a
subset of the image's. Values from deeper (more specific) files override
shallower ones; at one level, files with more entities override fewer. For
``.bval``/``.bvec`` the most specific applicable file wins.

Everything is indexed once per dataset, so a lookup costs a few dictionary
probes per ancestor folder instead of a directory walk per image.
"""

from __future__ import annotations

import json
import posixpath
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from openmind_curate.bids.entities import BidsName

SIDECAR_EXTENSIONS = (".json", ".bval", ".bvec")


def _ancestors(folder: str) -> list[str]:
    parts = folder.split("/") if folder else []
    return [""] + ["/".join(parts[: i + 1]) for i in range(len(parts))]


class Inheritance:
    """Index of a dataset's metadata files, for applicable-file lookups."""

    def __init__(self, files: Iterable[tuple[str, BidsName]]):
        # (suffix, extension) -> folder -> [(entity items, rel path)]
        self._index: dict[tuple[str, str], dict[str, list[tuple[frozenset, str]]]] = defaultdict(
            lambda: defaultdict(list)
        )
        for rel, name in files:
            if name.extension in SIDECAR_EXTENSIONS:
                folder = posixpath.dirname(rel)
                self._index[(name.suffix, name.extension)][folder].append(
                    (frozenset(name.entities.items()), rel)
                )
        for by_folder in self._index.values():
            for entries in by_folder.values():
                entries.sort(key=lambda e: (len(e[0]), e[1]))

    def applicable(self, rel: str, name: BidsName, extension: str) -> list[str]:
        """Files that apply to the image at `rel`, most general first."""
        by_folder = self._index.get((name.suffix, extension))
        if not by_folder:
            return []
        items = frozenset(name.entities.items())
        out = []
        for folder in _ancestors(posixpath.dirname(rel)):
            for entity_items, path in by_folder.get(folder, ()):
                if entity_items <= items:
                    out.append(path)
        return out

    def nearest(self, rel: str, name: BidsName, extension: str) -> str | None:
        found = self.applicable(rel, name, extension)
        return found[-1] if found else None


def merge(documents: Iterable[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for doc in documents:
        out.update(doc)
    return out


def load_json(path: str) -> tuple[dict[str, Any] | None, tuple[str, str] | None]:
    """(document, None), or (None, (problem kind, message saying what is wrong))."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        return None, ("unreadable", "file not found (broken link?)")
    except OSError as exc:
        return None, ("unreadable", f"cannot read: {exc.strerror or exc}")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return None, ("encoding", f"not UTF-8: {exc}")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        return None, ("malformed_json", f"malformed JSON: {exc.msg} at {where}")
    if not isinstance(doc, dict):
        kind = type(doc).__name__
        return None, ("malformed_json", f"top level is a JSON {kind}, not an object")
    return doc, None
