"""`curate masks`: both masks for every readable image of an index.

Outputs, per image, under ``DERIV_ROOT/<dataset_id>/<folder of the image>/``
(names from `mask_names`; for ``sub-01_T1w``)::

    sub-01_desc-T1wAnatomy_mask.nii.gz        uint8 {0,1}, the image's grid
    sub-01_desc-T1wAnonymization_mask.nii.gz  uint8 {0,1}, the image's grid
    sub-01_desc-T1wAnatomy_mask.json          decision, numbers, versions (written last)

The JSON is the completion marker: a killed run redoes only the images without
one, and a run with other mask options those made with the old ones (its
``options_hash``, see `jobs.stage`). The index gains ``anat_mask_path``,
``anon_mask_path`` and ``is_brain_extracted`` through the index store (which
stores the paths relative to the index's folder), for images whose file has
not changed since.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from openmind_curate import index as store
from openmind_curate.bids.entities import parse_name
from openmind_curate.jobs import JobOptions, source_stamp
from openmind_curate.jobs.stage import StageJob, records, run_stage
from openmind_curate.masks import template
from openmind_curate.masks.compute import MaskConfig, compute_masks
from openmind_curate.nifti_io import load_nifti, save_nifti

#: Modalities that are brain-masked by construction (our DWI maps).
BRAIN_MASKED = ("FA", "MD")


@dataclass(frozen=True)
class MaskJob(StageJob):
    image_id: str
    source: str
    out_dir: str
    stem: str
    phase: bool = False
    derived: bool = False  # a DWI-derived map: brain-extracted by construction
    config: MaskConfig = field(default_factory=MaskConfig)
    magnitude: str | None = None  # a phase image's part-mag sibling, masked in its place

    def path(self, kind: str) -> Path:
        return Path(self.out_dir) / mask_names(self.stem)[kind]

    @property
    def marker(self) -> Path:
        return self.path("record")


#: The ``desc`` label of each mask, after the source's own desc and suffix.
_KINDS = {"anat": "Anatomy", "anon": "Anonymization"}


def mask_names(stem: str) -> dict[str, str]:
    """BIDS-derivative names of an image's masks: the source's entities, then
    ``desc-<source desc><source suffix><Kind>_mask``, so two masks of one
    subject stay apart and a name never holds two ``desc`` entities or a
    suffix in its middle. ``sub-01_ses-01_desc-meanb0_T2w`` gives
    ``sub-01_ses-01_desc-meanb0T2wAnatomy_mask.nii.gz``; the record is the
    anatomy mask's JSON sidecar. A name that is not BIDS-shaped keeps its stem.
    """
    parsed = parse_name(stem + ".nii.gz")
    if parsed is None or not parsed.suffix.isalnum():
        names = {k: f"{stem}_desc-{v.lower()}_mask.nii.gz" for k, v in _KINDS.items()}
    else:
        ents = "".join(f"{k}-{v}_" for k, v in parsed.entities.items() if k != "desc")
        source = parsed.entities.get("desc", "") + parsed.suffix
        names = {k: f"{ents}desc-{source}{v}_mask.nii.gz" for k, v in _KINDS.items()}
    names["record"] = names["anat"].replace(".nii.gz", ".json")
    return names


def _stem(path: str) -> str:
    name = posixpath.basename(path)
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def phase_and_derived(row) -> tuple[bool, bool]:
    """An index row's two mask decisions: is it a phase part, and is it a
    DWI-derived map (brain-extracted by construction)?"""
    flags = row.flags if isinstance(row.flags, str) else ""
    derived = isinstance(getattr(row, "derived_from", None), str) or row.modality in BRAIN_MASKED
    return "phase" in flags, derived


def jobs_for_index(index, out: Path, config: MaskConfig | None = None) -> list[MaskJob]:
    """One job per image whose header is ok, from an index read through
    `index.read` (absolute roots); outputs under ``OUT/<dataset_id>/``."""
    cfg = config or MaskConfig()
    out = Path(os.path.abspath(out))
    rows = index[index["header_status"] == "ok"]
    known = set(zip(rows["dataset_id"], rows["path"], strict=True))
    jobs = []
    for r in rows.itertuples():
        phase, derived = phase_and_derived(r)
        out_dir = out / r.dataset_id / posixpath.dirname(r.path)
        magnitude = None
        if phase:
            mag = magnitude_sibling(r.path)
            if mag and (r.dataset_id, mag) in known:
                magnitude = str(Path(r.root) / mag)
        jobs.append(
            MaskJob(
                r.image_id,
                str(Path(r.root) / r.path),
                str(out_dir),
                _stem(r.path),
                phase,
                derived,
                cfg,
                magnitude,
            )
        )
    return jobs


def magnitude_sibling(path: str) -> str | None:
    """``..._part-phase_...`` -> ``..._part-mag_...`` (BIDS), else None."""
    name = posixpath.basename(path)
    if "_part-phase_" not in name:
        return None
    return posixpath.join(posixpath.dirname(path), name.replace("_part-phase_", "_part-mag_"))


def process(job: MaskJob) -> dict[str, Any]:
    """Masks of one image (the batch item).

    A phase image with a magnitude sibling on the same grid is masked from the
    magnitude, where the head has an edge; alone, from its phase smoothness.
    """
    stamp = source_stamp(job.source)  # before reading: a later change means redo
    data, affine = load_nifti(job.source)
    forced = True if job.derived else None
    phase, masked_from = job.phase, job.source
    if job.magnitude:
        mag, mag_affine = load_nifti(job.magnitude)
        if mag.shape[:3] == data.shape[:3] and np.allclose(mag_affine, affine, atol=1e-4):
            data, phase, masked_from = mag, False, job.magnitude
    masks = compute_masks(data, affine, phase=phase, brain_extracted=forced, config=job.config)
    for kind, arr in (("anat", masks.anatomy), ("anon", masks.anonymization)):
        save_nifti(arr.astype(np.uint8), affine, job.path(kind), "uint8")
    record = {
        "source": job.source,
        "masked_from": masked_from,
        "image_id": job.image_id,
        "anat_mask_path": job.path("anat").name,  # beside this record
        "anon_mask_path": job.path("anon").name,
        "is_brain_extracted": masks.is_brain_extracted,
        "anonymization": masks.anonymization_kind,
        "anat_fraction": float(masks.anatomy.mean()),
        "anon_fraction": float(masks.anonymization.mean()),
        "details": masks.details,
    }
    return job.write_marker(record, stamp, indent=1, default=float)


def run_jobs(jobs: list[MaskJob], options: JobOptions):
    """Run the batch; returns it and the record of every finished image, with
    the mask paths where they are now (absolute), whether it is a DWI-derived
    map, and the size and mtime of the file that was masked. Images masked with other
    options are redone unless ``options.keep_existing``."""
    for j in jobs:
        Path(j.out_dir).mkdir(parents=True, exist_ok=True)
    if jobs and not options.scheduler:
        # Built (or loaded) once here: forked workers inherit it, rather than
        # each building it on its first image.
        template.template(template.FIT_MM)
        template.template(template.LABEL_MM)
    batch = run_stage(process, jobs, options)
    found = []
    for job, record in zip(jobs, records(jobs, batch), strict=True):
        if record is None:
            continue
        # The guard of `update_index`: the file as it was when masked.
        found.append(
            {
                **record,
                "anat_mask_path": str(job.path("anat")),
                "anon_mask_path": str(job.path("anon")),
                "derived": job.derived,
                "size_bytes": record.get("source_size_bytes"),
                "mtime_ns": record.get("source_mtime_ns"),
            }
        )
    return batch, found


def update_index(index_path: Path, records: list[dict[str, Any]]) -> store.RowsResult:
    """Mask paths and the brain-extraction decision into the index (store)."""
    if not records:
        return store.RowsResult()
    cols = ["image_id", "anat_mask_path", "anon_mask_path", "is_brain_extracted"]
    values = pd.DataFrame(records)
    guard = [c for c in ("size_bytes", "mtime_ns") if values[c].notna().all()]
    return store.set_columns(index_path, values[cols + guard], guard)
