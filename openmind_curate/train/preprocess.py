"""`curate preprocess`: a manifest's images (and masks) into the training store.

Per image (one batch item, `process`):

1. read it (nibabel, through `nifti_io.load_nifti`; a 4D series keeps its first
   volume) and its masks; a file that cannot be read, a volume with NaN/inf,
   an empty (all-zero) or constant volume is *rejected* with its reason;
2. reorient to LPS (`sitk.DICOMOrient`): array axes (D, H, W) run
   inferior->superior, anterior->posterior, right->left;
3. resample to `spacing` mm isotropic (default 1 mm; ``native`` keeps the
   voxel size) with SimpleITK: linear for the image, nearest neighbour for the
   masks, on one grid centred on the image's field of view;
4. crop to the bounding box of the image's nonzero voxels (masks cropped alike);
5. anatomy: the manifest's anatomy mask, or, without one (or an empty one),
   the image's nonzero region;
6. optional clipping (CT-style): to fixed values or to percentiles of the
   anatomy region, of the nonzero voxels;
7. z-score: mean and standard deviation over the anatomy region; voxels that
   were 0 (outside the nonzero region) stay 0, as in nnU-Net, so the
   background agrees with the loader's zero padding;
8. write the case folder (`store` layout) under a temporary name and rename it.

The batch runs through `jobs.run_batch`: a killed run resumes (finished cases,
rejected ones included, are skipped), a case made with other options or from
a changed file is redone. Then ``store.parquet`` (every manifest image, ok or
rejected) and ``store.json`` are written.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from openmind_curate import __version__
from openmind_curate.atomic import atomic_path, atomic_write_text
from openmind_curate.errors import DataError, InputError
from openmind_curate.jobs import BatchResult, JobOptions, source_stamp
from openmind_curate.jobs.stage import StageJob, records, run_stage
from openmind_curate.train import store as S

ORIENTATION = "LPS"
TEMP_PREFIX = ".tmp-"


@dataclass(frozen=True)
class Clip:
    """Clip intensities to [low, high] before normalizing; with `percentiles`
    the bounds are percentiles (0..100) of the anatomy region."""

    low: float
    high: float
    percentiles: bool = False

    def describe(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PreprocessConfig:
    spacing: float | None = 1.0
    """Isotropic voxel size in mm; None keeps each image's own (``native``)."""
    clip: Clip | None = None
    chunks: tuple[int, int, int] = (64, 64, 64)
    blocks: tuple[int, int, int] = (16, 16, 16)
    codec: str = "ZSTD"
    clevel: int = 1


def parse_spacing(text: str) -> float | None:
    """``1.0`` -> 1.0; ``native`` -> None. InputError otherwise."""
    if text.strip().lower() == "native":
        return None
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"--spacing {text!r}: give a voxel size in mm or 'native'") from None
    if not np.isfinite(value) or value <= 0:
        raise InputError(f"--spacing {text!r}: must be a positive size in mm")
    return value


def parse_clip(text: str | None) -> Clip | None:
    """``-1000,1000`` (values) or ``p0.5,p99.5`` (percentiles of the anatomy region)."""
    if text is None or not text.strip():
        return None
    parts = [p.strip() for p in text.split(",")]
    bad = InputError(
        f"--clip {text!r}: use LOW,HIGH (e.g. -1000,1000) or percentiles "
        "pLOW,pHIGH (e.g. p0.5,p99.5)"
    )
    if len(parts) != 2:
        raise bad
    pct = [p.lower().startswith("p") for p in parts]
    if pct[0] != pct[1]:
        raise bad
    try:
        low, high = (float(p[1:] if pct[0] else p) for p in parts)
    except ValueError:
        raise bad from None
    if not (np.isfinite(low) and np.isfinite(high)) or low >= high:
        raise InputError(f"--clip {text!r}: LOW must be below HIGH")
    if pct[0] and not (0 <= low and high <= 100):
        raise InputError(f"--clip {text!r}: percentiles lie in 0..100")
    return Clip(low, high, pct[0])


@dataclass(frozen=True)
class PrepJob(StageJob):
    case_id: str
    source: str
    anat: str | None
    anon: str | None
    store: str
    meta: tuple[tuple[str, Any], ...] = ()
    config: PreprocessConfig = field(default_factory=PreprocessConfig)

    @property
    def marker(self) -> Path:
        return S.record_path(self.store, self.case_id)

    def is_current(self) -> bool:
        """The case was made with these options, from the image as it is now, and
        with the masks the manifest names now (a case rejected because its file was
        missing is redone once the file exists)."""
        if not super().is_current():
            return False
        try:
            doc = json.loads(self.marker.read_text())
        except (OSError, ValueError):
            return False
        if "source_mtime_ns" not in doc and os.path.exists(self.source):
            return False  # rejected while the file was missing: it is there now
        return doc.get("anat_source") == self.anat and doc.get("anon_source") == self.anon


class Rejected(DataError):
    """A case that cannot be used; the message is the recorded reason."""


# ------------------------------------------------------------------- one case


def _read(path: str, what: str) -> tuple[np.ndarray, np.ndarray]:
    from openmind_curate.nifti_io import load_nifti

    try:
        data, affine = load_nifti(path)
    except Exception as exc:  # noqa: BLE001 - any read failure is a reason
        raise Rejected(f"unreadable {what}: {exc}") from None
    if data.ndim == 4:
        data = data[..., 0]
    return data, affine


def _check_values(data: np.ndarray) -> None:
    finite = np.isfinite(data)
    if not finite.all():
        n_nan = int(np.isnan(data).sum())
        n_inf = int(data.size - finite.sum() - n_nan)
        raise Rejected(f"non-finite values: {n_nan} NaN, {n_inf} inf")
    if not data.any():
        raise Rejected("empty volume: no nonzero voxel")


def _oriented(data: np.ndarray, affine: np.ndarray):
    import SimpleITK as sitk

    from openmind_curate.nifti_io import to_sitk

    return sitk.DICOMOrient(to_sitk(data, affine), ORIENTATION)


def _reference(img, spacing: float | None):
    """The output grid: `spacing` mm isotropic, same direction, centred on the
    image's field of view (None: the image's own grid)."""
    import SimpleITK as sitk

    if spacing is None:
        ref = sitk.Image(img.GetSize(), sitk.sitkUInt8)
        ref.CopyInformation(img)
        return ref
    old_sp = np.array(img.GetSpacing())
    size = np.array(img.GetSize())
    new_sp = np.full(3, float(spacing))
    new_size = np.maximum(1, np.round(size * old_sp / new_sp)).astype(int)
    direction = np.array(img.GetDirection()).reshape(3, 3)
    centre = np.array(img.GetOrigin()) + direction @ ((size - 1) * old_sp / 2)
    origin = centre - direction @ ((new_size - 1) * new_sp / 2)
    ref = sitk.Image([int(v) for v in new_size], sitk.sitkUInt8)
    ref.SetSpacing([float(v) for v in new_sp])
    ref.SetOrigin([float(v) for v in origin])
    ref.SetDirection(img.GetDirection())
    return ref


def _resample(img, ref, linear: bool) -> np.ndarray:
    """`img` on `ref`'s grid as a (D, H, W) array (ITK's z, y, x)."""
    import SimpleITK as sitk

    interp = sitk.sitkLinear if linear else sitk.sitkNearestNeighbor
    out = sitk.Resample(img, ref, sitk.Transform(), interp, 0.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)


def _mask(path: str, what: str, ref) -> np.ndarray:
    data, affine = _read(path, what)
    if not np.isfinite(data).all():
        raise Rejected(f"{what} has non-finite values")
    return _resample(_oriented((data > 0).astype(np.float32), affine), ref, linear=False) > 0.5


def nonzero_box(image: np.ndarray) -> tuple[slice, ...]:
    """Bounding box of the nonzero voxels (the whole volume if there are none)."""
    nz = image != 0
    box = []
    for axis in range(image.ndim):
        other = tuple(a for a in range(image.ndim) if a != axis)
        hits = np.flatnonzero(nz.any(axis=other))
        box.append(slice(int(hits[0]), int(hits[-1]) + 1) if hits.size else slice(None))
    return tuple(box)


def normalize(
    image: np.ndarray, anatomy: np.ndarray, clip: Clip | None = None
) -> tuple[np.ndarray, dict[str, float]]:
    """Clip (optional) and z-score with the anatomy region's mean and standard
    deviation; voxels that are 0 stay 0. Rejected when the region is constant."""
    nonzero = image != 0
    values = image[anatomy]
    stats: dict[str, float] = {}
    work = image.astype(np.float32, copy=True)
    if clip is not None:
        low, high = clip.low, clip.high
        if clip.percentiles:
            low, high = (float(v) for v in np.percentile(values, [clip.low, clip.high]))
        np.clip(work, low, high, out=work)
        stats.update(clip_low=float(low), clip_high=float(high))
        values = work[anatomy]
    mean = float(values.mean(dtype=np.float64))
    std = float(values.std(dtype=np.float64))
    if not np.isfinite(std) or std < 1e-8 * max(1.0, abs(mean)):
        raise Rejected("constant intensity over the anatomy region (standard deviation 0)")
    work -= np.float32(mean)
    work /= np.float32(std)
    work[~nonzero] = 0
    stats.update(mean=mean, std=std)
    return work, stats


def anatomy_points(anat: np.ndarray, case_id: str, n: int = S.N_POINTS) -> np.ndarray:
    """Up to `n` anatomy voxel coordinates (int16, (n, 3)), a fixed random choice."""
    from openmind_curate.ids import stable_int

    flat = np.flatnonzero(anat)
    if flat.size > n:
        rng = np.random.default_rng(stable_int("anat_points", case_id))
        flat = np.sort(rng.choice(flat, n, replace=False))
    return np.stack(np.unravel_index(flat, anat.shape), axis=1).astype(np.int16)


def prepare(job: PrepJob) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """One case's arrays and record (raises `Rejected`)."""
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)  # one case per worker process
    data, affine = _read(job.source, "image")
    _check_values(data)
    img = _oriented(data, affine)
    ref = _reference(img, job.config.spacing)
    if job.config.spacing is None:  # the image's own grid: no interpolation at all
        image = sitk.GetArrayFromImage(sitk.Cast(img, sitk.sitkFloat32))
    else:
        image = _resample(img, ref, linear=True)
        # Linear interpolation leaves float residue (1e-7) in voxels that were 0,
        # which z-scoring would turn into -mean/std: the nonzero region is the
        # source's, resampled nearest-neighbour (found on the MNI152 template).
        support = _resample(_oriented((data != 0).astype(np.float32), affine), ref, linear=False)
        image[support < 0.5] = 0
    box = nonzero_box(image)
    image = np.ascontiguousarray(image[box])
    if not image.any():
        raise Rejected("empty volume: no nonzero voxel after resampling")
    arrays: dict[str, np.ndarray] = {}
    anatomy = "nonzero"
    anat = image != 0
    if job.anat:
        mask = _mask(job.anat, "anatomy mask", ref)[box]
        if mask.any():
            anat, anatomy = mask, "mask"
    if job.anon:
        arrays["anon"] = np.ascontiguousarray(
            _mask(job.anon, "anonymization mask", ref)[box], dtype=np.uint8
        )
    arrays["image"], stats = normalize(image, anat, job.config.clip)
    arrays["anat"] = anat.astype(np.uint8)
    record = {
        "case_id": job.case_id,
        "status": "ok",
        "reason": None,
        "shape": list(image.shape),
        "spacing": [float(v) for v in ref.GetSpacing()[::-1]],  # (D, H, W) order
        "has_anon": job.anon is not None,
        "anatomy": anatomy,
        "source": job.source,
        "anat_source": job.anat,
        "anon_source": job.anon,
        "source_shape": list(data.shape),
        "crop_start": [int(s.start or 0) for s in box],
        "anat_voxels": int(anat.sum()),
        **stats,
    }
    return arrays, record


def _write_array(path: Path, arr: np.ndarray, config: PreprocessConfig) -> None:
    import blosc2

    chunks = tuple(min(c, n) for c, n in zip(config.chunks, arr.shape, strict=True))
    blocks = tuple(min(b, c) for b, c in zip(config.blocks, chunks, strict=True))
    cparams = blosc2.CParams(
        codec=getattr(blosc2.Codec, config.codec), clevel=config.clevel, nthreads=1
    )
    blosc2.asarray(arr, urlpath=str(path), mode="w", chunks=chunks, blocks=blocks, cparams=cparams)


def _publish(tmp: Path, final: Path) -> None:
    """Rename the finished temporary case folder into place; an older folder
    (its marker already removed: being redone) is moved aside first."""
    old = None
    if final.exists():
        old = final.with_name(f"{TEMP_PREFIX}old-{final.name}-{secrets.token_hex(4)}")
        os.rename(final, old)
    os.rename(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def process(job: PrepJob) -> dict[str, Any]:
    """The batch item: one case folder, ok or rejected; returns its record."""
    stamp = source_stamp(job.source)  # before reading: a later change means redo
    meta = dict(job.meta)
    final = S.case_dir(job.store, job.case_id)
    tmp = final.with_name(f"{TEMP_PREFIX}{job.case_id}-{os.getpid()}-{secrets.token_hex(4)}")
    tmp.mkdir(parents=True)
    try:
        try:
            arrays, record = prepare(job)
        except Rejected as exc:
            arrays = {}
            record = {
                "case_id": job.case_id,
                "status": "rejected",
                "reason": str(exc),
                "shape": None,
                "spacing": None,
                "has_anon": job.anon is not None,
                "anatomy": None,
                "source": job.source,
                "anat_source": job.anat,
                "anon_source": job.anon,
            }
        for kind, arr in arrays.items():
            _write_array(tmp / S.ARRAYS[kind], arr, job.config)
        if arrays:
            np.save(tmp / S.POINTS_FILE, anatomy_points(arrays["anat"], job.case_id))
        record = job.marked({**meta, **record}, stamp)
        (tmp / S.RECORD_FILE).write_text(json.dumps(record, indent=1))
        _publish(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return record


# ------------------------------------------------------------------ the batch


@dataclass
class PreprocessResult:
    store: Path
    batch: BatchResult
    table: pd.DataFrame
    """store.parquet: every manifest image, ok or rejected."""
    meta: dict[str, Any]

    @property
    def ok(self) -> pd.DataFrame:
        return self.table[self.table["status"] == "ok"]

    @property
    def rejected(self) -> pd.DataFrame:
        return self.table[self.table["status"] == "rejected"]


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def jobs_for_manifest(manifest: pd.DataFrame, out: Path, config: PreprocessConfig) -> list[PrepJob]:
    """One job per manifest row (absolute paths, as `read_manifest` returns)."""
    ids = manifest["image_id"]
    dup = ids[ids.duplicated()]
    if len(dup):
        raise InputError(f"manifest lists image_id {dup.iloc[0]!r} twice")
    jobs = []
    for r in manifest.itertuples(index=False):
        meta = tuple(
            (k, _text(getattr(r, k, None))) for k in ("dataset_id", "subject", "split", "modality")
        )
        jobs.append(
            PrepJob(
                str(r.image_id),
                str(Path(r.root) / r.path),
                _text(getattr(r, "anat_mask_path", None)),
                _text(getattr(r, "anon_mask_path", None)),
                str(out),
                meta,
                config,
            )
        )
    return jobs


def _remove_stale_case_temps(root: Path) -> None:
    cases = root / S.CASES_DIR
    if not cases.is_dir():
        return
    for entry in cases.iterdir():
        if entry.name.startswith(TEMP_PREFIX):
            shutil.rmtree(entry, ignore_errors=True)


def preprocess(
    manifest: pd.DataFrame | str | os.PathLike[str],
    out: str | os.PathLike[str],
    config: PreprocessConfig = PreprocessConfig(),
    options: JobOptions = JobOptions(),
) -> PreprocessResult:
    """Preprocess every manifest image into the store at `out` (see the module
    docstring); resumable. `manifest` is a path or a frame from `read_manifest`."""
    if not isinstance(manifest, pd.DataFrame):
        from openmind_curate.manifest.writers import read_manifest

        manifest_path: str | None = str(Path(os.path.abspath(manifest)))
        manifest = read_manifest(manifest, as_frame=True)
    else:
        manifest_path = None
    root = Path(os.path.abspath(out))
    (root / S.CASES_DIR).mkdir(parents=True, exist_ok=True)
    _remove_stale_case_temps(root)
    jobs = jobs_for_manifest(manifest, root, config)
    batch = run_stage(process, jobs, options)
    rows = []
    for job, res, record in zip(jobs, batch.results, records(jobs, batch), strict=True):
        if record is None:  # failed: not recorded on disk, so the next run tries again
            record = {
                "case_id": job.case_id,
                "status": "rejected",
                "source": job.source,
                "reason": f"failed: {res.error}",
                "has_anon": job.anon is not None,
                **dict(job.meta),
            }
        rows.append({**dict(job.meta), **record})
    table = _index_table(rows)
    meta = _store_meta(config, table, manifest_path)
    import pyarrow.parquet as pq

    with atomic_path(root / S.INDEX_FILE) as tmp:
        pq.write_table(table, tmp)
    atomic_write_text(root / S.META_FILE, json.dumps(meta, indent=1))
    return PreprocessResult(root, batch, table.to_pandas(), meta)


def _index_table(rows: list[dict[str, Any]]):
    import pyarrow as pa

    cols = {f.name: [r.get(f.name) for r in rows] for f in S.STORE_INDEX}
    return pa.Table.from_pydict(cols, schema=S.STORE_INDEX)


def _store_meta(config: PreprocessConfig, table, manifest_path: str | None) -> dict[str, Any]:
    status = table.column("status").to_pylist()
    has_anon = table.column("has_anon").to_pylist()
    anatomy = table.column("anatomy").to_pylist()
    ok = [s == "ok" for s in status]
    spacing = "native" if config.spacing is None else [config.spacing] * 3
    return {
        "version": S.STORE_VERSION,
        "toolkit_version": __version__,
        "spacing": spacing,
        "orientation": {
            "code": ORIENTATION,
            "axes": ["inferior->superior", "anterior->posterior", "right->left"],
            "how": "SimpleITK DICOMOrient; arrays in ITK (z, y, x) order",
        },
        "interpolation": {"image": "linear", "masks": "nearest"},
        "crop": "bounding box of the image's nonzero voxels",
        "normalization": {
            "method": "zscore",
            "region": "anatomy",
            "anatomy_fallback": "nonzero region when there is no anatomy mask",
            "zeros": "voxels that were 0 stay 0",
        },
        "clipping": None if config.clip is None else config.clip.describe(),
        "dtypes": {"image": "float32", "anat": "uint8", "anon": "uint8"},
        "chunks": list(config.chunks),
        "blocks": list(config.blocks),
        "codec": {"name": config.codec, "clevel": config.clevel},
        "manifest": manifest_path,
        "counts": {
            "cases": len(status),
            "ok": sum(ok),
            "rejected": len(status) - sum(ok),
            "without_anon": sum(o and not a for o, a in zip(ok, has_anon, strict=True)),
            "anatomy_from_nonzero": sum(
                o and a == "nonzero" for o, a in zip(ok, anatomy, strict=True)
            ),
        },
    }
