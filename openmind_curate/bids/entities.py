"""BIDS file names: entities, suffix and extension, parsed without pybids.

A BIDS name is ``key-value`` pairs joined by ``_``, then ``_suffix``, then an
extension that starts at the first dot. Parsing is a split, not a regex scan
of the path, because the crawler runs it on every file of every dataset.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Long names of the entities the image index keeps as their own columns.
ENTITY_NAMES: dict[str, str] = {
    "sub": "subject",
    "ses": "session",
    "task": "task",
    "acq": "acq",
    "ce": "ce",
    "rec": "rec",
    "dir": "dir",
    "run": "run",
    "echo": "echo",
    "flip": "flip",
    "inv": "inv",
    "mt": "mt",
    "part": "part",
}

NIFTI_EXTENSIONS = (".nii.gz", ".nii")


@dataclass(frozen=True)
class BidsName:
    entities: dict[str, str]  # short keys, in file order: {"sub": "01", "acq": "mprage"}
    suffix: str
    extension: str  # ".nii.gz", ".json", ...

    @property
    def is_nifti(self) -> bool:
        return self.extension in NIFTI_EXTENSIONS


def split_extension(name: str) -> tuple[str, str]:
    dot = name.find(".")
    return (name, "") if dot < 0 else (name[:dot], name[dot:])


def parse_name(name: str) -> BidsName | None:
    """Parse a file name; None when it is not BIDS-shaped (no ``key-value`` parts
    before a suffix). Unknown entity keys are kept."""
    stem, ext = split_extension(name)
    parts = stem.split("_")
    suffix = parts[-1]
    if not suffix or "-" in suffix:
        return None
    entities: dict[str, str] = {}
    for part in parts[:-1]:
        key, sep, value = part.partition("-")
        if not sep or not key or not value:
            return None
        entities[key] = value
    return BidsName(entities, suffix, ext)
