"""`curate dwi` at the file level: find the gradient table, run the pipeline,
write a BIDS-derivatives dataset, a QC figure and index rows, in batch.

Outputs per series, next to each other in ``OUT/<dataset>/<subject>/[<session>/]dwi/``::

    <stem>_FA.nii.gz  <stem>_MD.nii.gz  <stem>_desc-meanb0_T2w.nii.gz
    <stem>_desc-brain_mask.nii.gz       (+ a .json sidecar for each)
    <stem>_desc-qc_dwi.png              b0, FA, MD, mask overlay, motion plot
    <stem>_desc-pipeline_dwi.json       the run record, written last

``<stem>`` is the source name without ``_dwi.nii.gz``. Every file is written
atomically and the run record last, so its presence means the series is done
and a re-run skips it, unless the record's ``options_hash`` says it was made
with other options (see `jobs.stage`): then the series is recomputed.
"""

from __future__ import annotations

import json
import os
import platform
import posixpath
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import dipy
import nibabel as nib
import numpy as np
import scipy
import SimpleITK
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from threadpoolctl import threadpool_limits

from openmind_curate import __version__
from openmind_curate import index as store
from openmind_curate.atomic import atomic_path, atomic_write_text
from openmind_curate.bids.entities import parse_name
from openmind_curate.bids.nifti import read_header
from openmind_curate.bids.sidecars import Inheritance
from openmind_curate.dwi.gradients import DwiInputError, read_table
from openmind_curate.dwi.pipeline import DwiConfig, DwiResult, run_pipeline
from openmind_curate.ids import image_id
from openmind_curate.jobs import BatchResult, JobOptions, options_hash, source_stamp
from openmind_curate.jobs.stage import StageJob, records, run_stage
from openmind_curate.nifti_io import save_nifti
from openmind_curate.schema import IMAGE_INDEX, rows_to_table, stage_columns

PIPELINE_NAME = "openmind-curate-dwi"
MAPS = {"FA": "_FA", "MD": "_MD", "T2w": "_desc-meanb0_T2w", "mask": "_desc-brain_mask"}


@dataclass(frozen=True)
class DwiJob(StageJob):
    source: str
    bval: str | None
    bvec: str | None
    deriv_root: str  # OUT/<dataset>: the derivative dataset written into
    rel_dir: str  # the source's folder inside its dataset
    stem: str
    dataset_id: str
    source_id: str | None = None
    config: DwiConfig = field(default_factory=DwiConfig)

    @property
    def out_dir(self) -> Path:
        return Path(self.deriv_root) / self.rel_dir

    def path(self, key: str) -> Path:
        return Path(self.out_dir) / f"{self.stem}{MAPS[key]}.nii.gz"

    @property
    def qc(self) -> Path:
        return Path(self.out_dir) / f"{self.stem}_desc-qc_dwi.png"

    @property
    def record(self) -> Path:
        return Path(self.out_dir) / f"{self.stem}_desc-pipeline_dwi.json"

    marker = record  # the run record is the completion marker


# ------------------------------------------------------------------ finding files


def stem_of(path: str) -> str:
    name = os.path.basename(path)
    for ext in (".nii.gz", ".nii"):
        name = name.removesuffix(ext)
    return name.removesuffix("_dwi")


def dataset_root(path: Path) -> Path | None:
    """The enclosing BIDS dataset (a folder with dataset_description.json)."""
    for parent in path.parents:
        if (parent / "dataset_description.json").is_file():
            return parent
    return None


def find_gradients(path: Path) -> tuple[str | None, str | None]:
    """bval/bvec for a series: same-name files, else BIDS inheritance."""
    base = str(path)
    for ext in (".nii.gz", ".nii"):
        base = base.removesuffix(ext)
    if os.path.isfile(base + ".bval") and os.path.isfile(base + ".bvec"):
        return base + ".bval", base + ".bvec"
    root = dataset_root(path)
    name = parse_name(path.name)
    if root is None or name is None:
        return None, None
    rel = path.relative_to(root).as_posix()
    files = []
    folder = root
    for part in ["", *Path(rel).parent.parts]:
        folder = folder / part if part else folder
        for entry in os.listdir(folder):
            if entry.endswith((".bval", ".bvec")) and (parsed := parse_name(entry)):
                files.append(
                    (
                        posixpath.join(folder.relative_to(root).as_posix(), entry).removeprefix(
                            "./"
                        ),
                        parsed,
                    )
                )
    inherit = Inheritance(files)
    found = [inherit.nearest(rel, name, ext) for ext in (".bval", ".bvec")]
    return tuple(str(root / f) if f else None for f in found)  # type: ignore[return-value]


def jobs_for_files(files: list[Path], out: Path, config: DwiConfig) -> list[DwiJob]:
    out = Path(os.path.abspath(out))
    jobs = []
    for f in files:
        f = f.resolve()
        root = dataset_root(f)
        dataset_id = root.name if root else "dwi"
        rel_dir = f.parent.relative_to(root).as_posix() if root else ""
        bval, bvec = find_gradients(f)
        jobs.append(
            DwiJob(
                str(f),
                bval,
                bvec,
                str(out / dataset_id),
                rel_dir,
                stem_of(f.name),
                dataset_id,
                None,
                config,
            )
        )
    return jobs


def jobs_for_index(index, out: Path, config: DwiConfig) -> list[DwiJob]:
    """One job per readable source DWI of an index read through `index.read`
    (absolute roots); outputs under ``OUT/<dataset_id>/``. The largest files
    come first: a series takes time in proportion to its size, and starting
    the longest jobs first keeps workers from idling at the end of a batch
    (the demo's three series: 53 s instead of 65 s on two workers)."""
    out = Path(os.path.abspath(out))
    rows = index[
        (index["modality"] == "DWI") & (index["header_status"] == "ok") & ~index["is_derivative"]
    ]
    rows = rows.sort_values("size_bytes", ascending=False, kind="stable")
    jobs = []
    for r in rows.itertuples():
        root = Path(r.root)
        src = root / r.path
        bval = str(root / r.bval_path) if isinstance(r.bval_path, str) else None
        bvec = str(root / r.bvec_path) if isinstance(r.bvec_path, str) else None
        rel_dir = posixpath.dirname(r.path)
        jobs.append(
            DwiJob(
                str(src),
                bval,
                bvec,
                str(out / r.dataset_id),
                rel_dir,
                stem_of(r.path),
                r.dataset_id,
                r.image_id,
                config,
            )
        )
    return jobs


# ----------------------------------------------------------------------- writing


def _versions() -> dict[str, str]:
    return {
        "openmind-curate": __version__,
        "dipy": dipy.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "SimpleITK": SimpleITK.Version.VersionString(),
        "nibabel": nib.__version__,
        "python": platform.python_version(),
    }


def write_description(folder: Path) -> None:
    path = folder / "dataset_description.json"
    if not path.exists():
        doc = {
            "Name": "openmind-curate DWI maps",
            "BIDSVersion": "1.9.0",
            "DatasetType": "derivative",
            "GeneratedBy": [
                {
                    "Name": PIPELINE_NAME,
                    "Version": __version__,
                    "Description": "denoise, Gibbs, motion, N4, mask, DTI (WLS)",
                }
            ],
        }
        atomic_write_text(path, json.dumps(doc, indent=2))


def qc_figure(result: DwiResult, path: Path) -> None:
    """The QC figure, drawn without pyplot (no global backend, no figure registry):
    the maps with their colour scales, and the motion in two panels, rotations
    (degrees) and translations (mm), against whole volume numbers."""
    z = int(np.argmax(result.mask.sum(axis=(0, 1)))) if result.mask.any() else 0
    fig = Figure(figsize=(12, 7), constrained_layout=True)
    grid = fig.add_gridspec(3, 4, height_ratios=[2.2, 1, 1])
    panels = [
        ("mean b0 (T2w)", result.t2w, "gray", None),
        ("FA", result.fa, "gray", (0, 1)),
        ("MD (mm²/s)", result.md, "viridis", (0, 3e-3)),
        ("mask on b0", result.t2w, "gray", None),
    ]
    for i, (title, arr, cmap, lim) in enumerate(panels):
        ax = fig.add_subplot(grid[0, i])
        shown = ax.imshow(
            arr[:, :, z].T,
            origin="lower",
            cmap=cmap,
            vmin=lim[0] if lim else None,
            vmax=lim[1] if lim else None,
        )
        if i == 3:
            ax.contour(result.mask[:, :, z].T, levels=[0.5], colors="r", linewidths=0.8)
        else:
            fig.colorbar(shown, ax=ax, shrink=0.8)
        ax.set_title(title)
        ax.axis("off")
    motion = result.reports.get("motion")
    if not motion:
        ax = fig.add_subplot(grid[1:, :])
        ax.text(0.5, 0.5, "motion correction off", ha="center")
        ax.axis("off")
    else:
        series = [
            ("rotation (deg)", np.array(motion["rotations_deg"])),
            ("translation (mm)", np.array(motion["translations_mm"])),
        ]
        for row, (label, values) in enumerate(series, start=1):
            ax = fig.add_subplot(grid[row, :])
            volumes = np.arange(len(values))
            for k, axis in enumerate("xyz"):
                ax.plot(volumes, values[:, k], marker=".", label=axis)
            ax.set_ylabel(label)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.legend(ncol=3, fontsize=8, loc="upper right")
            if row == 1:
                ax.set_title("estimated motion, per volume")
            else:
                ax.set_xlabel("volume")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80)


def process(job: DwiJob) -> dict[str, Any]:
    """One series, end to end (the batch item). Raises with a clear message."""
    if not job.bval or not job.bvec:
        raise DwiInputError(
            f"no .bval/.bvec found for {job.source} (same name or BIDS inheritance)"
        )
    stamp = source_stamp(job.source)  # before reading: a later change means redo
    try:
        img = nib.load(job.source)
        data = np.asanyarray(img.dataobj, dtype=np.float32)
    except Exception as exc:  # noqa: BLE001 - any read failure is reported the same way
        raise DwiInputError(f"cannot read {job.source}: {type(exc).__name__}: {exc}") from None
    bvals, bvecs = read_table(job.bval, job.bvec)
    with threadpool_limits(1):  # per-patch LAPACK calls crawl with BLAS threads
        try:
            result = run_pipeline(data, img.affine, bvals, bvecs, job.config)
        except DwiInputError as exc:
            raise DwiInputError(f"{job.source}: {exc}") from None
    write_description(Path(job.deriv_root))
    arrays = {"FA": result.fa, "MD": result.md, "T2w": result.t2w, "mask": result.mask}
    digest = options_hash(job.config)
    common = {
        "Sources": [job.source],
        "SourceImageID": job.source_id,
        "Steps": job.config.steps(),
        "Parameters": _params(job.config),
        "OptionsHash": digest,
        "SoftwareVersions": _versions(),
        "StepSeconds": result.seconds,
        "Motion": result.reports.get("motion"),
        "Warnings": result.warnings,
    }
    described = {
        "FA": "fractional anisotropy",
        "MD": "mean diffusivity, mm^2/s",
        "T2w": "mean b0, bias-corrected, brain-masked",
        "mask": "brain mask",
    }
    paths = {}
    for key, arr in arrays.items():
        path = job.path(key)
        save_nifti(arr, img.affine, path)
        sidecar = {"Description": described[key], **common}
        if key == "MD":
            sidecar["Units"] = "mm^2/s"
        atomic_write_text(
            path.with_name(path.name.replace(".nii.gz", ".json")),
            json.dumps(sidecar, indent=1, default=float),
        )
        paths[key] = str(path)
    qc_figure(result, job.qc)
    paths["qc"] = str(job.qc)
    record = {
        "input": job.source,
        "status": "done",
        "outputs": paths,
        "seconds": result.seconds,
        "warnings": result.warnings,
        "reports": result.reports,
        "source_id": job.source_id,
        "dataset_id": job.dataset_id,
    }
    return job.write_marker(record, stamp, indent=1, default=float)


def _params(config: DwiConfig) -> dict[str, Any]:
    return {k: v for k, v in asdict(config).items() if k != "threads"}


def run_jobs(jobs: list[DwiJob], options: JobOptions) -> tuple[BatchResult, list[dict]]:
    """Run the batch; returns it and one JSON-able result per input (in order).

    Series finished with other options are recomputed unless
    ``options.keep_existing``; ``batch.recomputed`` names them."""
    # On a cluster each worker is one core's worth (one thread per worker):
    # this machine's core count says nothing about the nodes'.
    concurrent = max(1, min(options.n_workers, len(jobs)))
    threads = 1 if options.scheduler else max(1, (os.cpu_count() or 1) // concurrent)
    jobs = [replace(j, config=replace(j.config, threads=threads)) for j in jobs]
    for j in jobs:
        j.out_dir.mkdir(parents=True, exist_ok=True)
    batch = run_stage(process, jobs, options)
    lines = []
    for job, res, record in zip(jobs, batch.results, records(jobs, batch), strict=True):
        if record is None:
            lines.append({"input": job.source, "status": "failed", "error": res.error})
            continue
        record = {**record, "status": res.status}
        lines.append(
            {k: record.get(k) for k in ("input", "status", "outputs", "seconds", "warnings")}
        )
    return batch, lines


# -------------------------------------------------------------------- index rows


def index_rows(jobs: list[DwiJob], index) -> list[dict[str, Any]]:
    """Rows for the FA, MD and T2w maps of every finished job.

    Each row's root is its derivative dataset (``OUT/<dataset_id>``) and its
    path is relative to it, so ``image_id(dataset_id, path)`` holds for map
    rows as for any other; the participant columns are the source's.
    """
    by_id = index.set_index("image_id") if index is not None else None
    rows = []
    for job in jobs:
        if not job.record.exists():
            continue
        source = by_id.loc[job.source_id].to_dict() if by_id is not None and job.source_id else {}
        deriv_root = Path(job.deriv_root)
        for key in ("FA", "MD", "T2w"):
            path = job.path(key)
            rel = path.relative_to(deriv_root).as_posix()
            head = read_header(path)
            st = path.stat()
            sidecar = path.with_name(path.name.replace(".nii.gz", ".json")).read_text()
            row = {k: v for k, v in source.items() if not _is_missing(v)}
            for stage_owned in stage_columns(IMAGE_INDEX):  # the source's, not the map's
                row.pop(stage_owned, None)
            row.update(
                image_id=image_id(job.dataset_id, rel),
                dataset_id=job.dataset_id,
                suffix=key,
                extension=".nii.gz",
                modality=key,
                is_derivative=True,
                flags=None,
                root=str(deriv_root),
                path=rel,
                size_bytes=st.st_size,
                mtime_ns=st.st_mtime_ns,
                header_status=head.status,
                shape=head.shape,
                spacing=head.spacing,
                n_volumes=head.n_volumes,
                dtype=head.dtype,
                sidecar=sidecar,
                derived_from=job.source_id,
                is_brain_extracted=True,
                bval_path=None,
                bvec_path=None,
                datatype="dwi",
            )
            if "subject" not in row:
                parsed = parse_name(Path(job.source).name)
                row["subject"] = parsed.entities.get("sub") if parsed else None
            rows.append(row)
    return rows


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def update_index(index_path: Path, rows: list[dict[str, Any]]) -> store.RowsResult:
    """Add (or replace, by image_id) the map rows, through the index store."""
    if not rows:
        return store.RowsResult()
    return store.add_rows(index_path, rows_to_table(rows, IMAGE_INDEX))
