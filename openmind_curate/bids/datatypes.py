"""BIDS datatypes: the folder level under a subject or session (``anat``,
``dwi``, ``pet``, ...), as `curate crawl --datatypes` and `curate fetch
--datatypes` take them. A name outside the BIDS specification is a typo, not
an empty selection, so it is refused with the list of known ones.
"""

from __future__ import annotations

from openmind_curate.errors import InputError

#: The datatypes of the BIDS specification (1.10).
BIDS_DATATYPES = (
    "anat",
    "beh",
    "dwi",
    "eeg",
    "fmap",
    "func",
    "ieeg",
    "meg",
    "micr",
    "motion",
    "mrs",
    "nirs",
    "perf",
    "pet",
)


def parse_datatypes(text: str, option: str = "--datatypes") -> tuple[str, ...]:
    """``"anat, dwi"`` -> ``("anat", "dwi")``: comma-separated, known, at least one."""
    names = tuple(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))
    unknown = [n for n in names if n not in BIDS_DATATYPES]
    if unknown:
        raise InputError(
            f"{option}: unknown BIDS datatype(s) {', '.join(unknown)}; "
            f"known: {', '.join(BIDS_DATATYPES)}"
        )
    if not names:
        raise InputError(f"{option} {text!r}: give at least one BIDS datatype (e.g. anat,dwi)")
    return names
