"""Modality groups (the paper's Table 10) from suffix, entities and folder.

Rules, in order:

1. Masks and segmentations are never images (``_mask``, ``_defacemask``,
   ``_dseg``, ``_probseg``, ...).
2. Deprecated suffixes map to their successors (``PD`` -> PDw,
   ``T2star`` -> T2starw) and spellings are normalized (``trace`` -> TRACE).
3. ``acq-``/``rec-``/``desc-`` hints decide where the suffix is ambiguous:
   a FLAIR or SWI stored as ``T2w``/``T2starw``, a time-of-flight ``angio``,
   a denoised UNIT1, a minimum-intensity projection.
4. Phase, real and imaginary parts (``part-``) and MP2RAGE inversions
   (``inv-``) keep their group but are flagged, since SSL wants magnitude
   images.
"""

from __future__ import annotations

from openmind_curate.schema import MODALITIES

NOT_IMAGES = frozenset(
    {
        "mask",
        "defacemask",
        "brainmask",
        "dseg",
        "probseg",
        "label",
        "roi",
        "events",
        "physio",
        "stim",
        "channels",
        "scans",
        "sessions",
        "participants",
        "coordsystem",
    }
)

_ALIASES = {
    "PD": "PDw",
    "T2star": "T2starw",
    "trace": "TRACE",
    "swi": "SWI",
    "minip": "minIP",
    "minIP": "minIP",
    "pet": "PET",
    "dwi": "DWI",
    "sbref": "sbref",
    "T1rho": "other",
}
_GROUPS = frozenset(MODALITIES)

# (substring of the acq/rec/desc label, lower-case) -> group, applied to these suffixes.
_HINTS: list[tuple[str, str, frozenset[str]]] = [
    ("flair", "FLAIR", frozenset({"T2w", "T1w"})),
    ("swi", "SWI", frozenset({"T2starw", "GRE", "T2w"})),
    ("minip", "minIP", frozenset({"T2starw", "SWI", "GRE"})),
    ("tof", "angio", frozenset({"T1w", "angio"})),
    ("denoised", "UNIT1_denoised", frozenset({"UNIT1"})),
    ("uni", "UNIT1", frozenset({"MP2RAGE"})),
]


def is_image_suffix(suffix: str) -> bool:
    return suffix not in NOT_IMAGES and not suffix.endswith("mask")


def modality_of(suffix: str, entities: dict[str, str]) -> tuple[str | None, list[str]]:
    """(group or None for a non-image, flags)."""
    if not is_image_suffix(suffix):
        return None, []
    group = _ALIASES.get(suffix, suffix)
    hints = " ".join(entities.get(k, "") for k in ("acq", "rec", "desc")).lower()
    for needle, target, applies_to in _HINTS:
        if needle in hints and (suffix in applies_to or group in applies_to):
            if needle == "uni" and "inv" in entities:
                continue
            group = target
            break
    if group not in _GROUPS:
        group = "other"
    flags = []
    part = entities.get("part")
    if part in ("phase", "real", "imag"):
        flags.append(part)
    if suffix == "MP2RAGE" and "inv" in entities and group == "MP2RAGE":
        flags.append("inversion")
    return group, flags
