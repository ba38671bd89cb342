"""Write one planned file (image, mask or label map) and its truth row.

`write_spec` is the unit of work the batch runner maps over; it depends only
on its `ImageSpec`, so files can be made in any order and a killed run resumes.
Truth masks and DWI ground truth go under ``truth/`` beside the datasets.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from openmind_curate.atomic import atomic_path, write_if_changed
from openmind_curate.dwi.gradients import fsl_to_voxel
from openmind_curate.ids import image_id, stable_int
from openmind_curate.nifti_io import save_nifti
from openmind_curate.synth import degrade
from openmind_curate.synth import dwi as dwisim
from openmind_curate.synth.head import LAYERS, HeadModel, head_model
from openmind_curate.synth.plan import ImageSpec
from openmind_curate.synth.render import (
    Grid,
    head_bbox_world,
    make_grid,
    render,
    resample,
    rotation,
    truth_masks,
)


@dataclass(frozen=True)
class WriteJob:
    spec: ImageSpec
    root: str  # corpus root (datasets are folders under it)

    def __str__(self) -> str:
        return f"{self.spec.dataset_id}/{self.spec.rel_path}"

    @property
    def image_path(self) -> Path:
        return Path(self.root) / self.spec.dataset_id / self.spec.rel_path

    @property
    def row_path(self) -> Path:
        iid = image_id(self.spec.dataset_id, self.spec.rel_path)
        return Path(self.root) / "truth" / "rows" / f"{iid}.json"

    def outputs(self) -> list[Path]:
        # The row is written last, so its presence means the item is complete.
        return [self.row_path]


def subject_to_mni(seed: int) -> np.ndarray:
    """A subject's pose and size: MNI = this @ subject world."""
    rng = np.random.default_rng([seed, 7])
    world = np.eye(4)
    world[:3, :3] = rotation(tuple(rng.uniform(-6, 6, 3))) @ np.diag(rng.uniform(0.93, 1.07, 3))
    world[:3, 3] = rng.uniform(-5, 5, 3)
    return np.linalg.inv(world)


def _grid(spec: ImageSpec, model: HeadModel, s2m: np.ndarray) -> Grid:
    lo, hi = head_bbox_world(model, s2m)
    if spec.datatype == "dwi":  # an EPI slab covers the brain, not the neck
        lo[2] = max(lo[2], hi[2] - 175.0)
    grid = make_grid((lo, hi), spec.spacing, spec.axcodes, spec.oblique_deg)
    if spec.fov_crop > 0:
        # Drop the top of the head: the array axis closest to world superior.
        axis = int(np.argmax(np.abs(grid.affine[2, :3])))
        up = grid.affine[2, axis] > 0
        cut = int(round(grid.shape[axis] * spec.fov_crop))
        shape = list(grid.shape)
        shape[axis] -= cut
        affine = grid.affine.copy()
        if not up:  # superior is at index 0: move the origin past the cut
            affine[:3, 3] += affine[:3, axis] * cut
        grid = Grid(tuple(shape), affine)
    return grid


def _quantize(data: np.ndarray, dtype: str, slope: float = 1.0) -> np.ndarray:
    if np.issubdtype(np.dtype(dtype), np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(data / slope), info.min, info.max).astype(dtype)
    return data.astype(dtype)


def _degrade(spec: ImageSpec, clean: np.ndarray, grid: Grid, rng) -> np.ndarray:
    img = clean
    if spec.bias_strength:
        img = img * degrade.bias_field(img.shape, spec.bias_strength, rng)
    img = degrade.blur(img, spec.blur_fwhm_mm, grid.spacing)
    img = degrade.gibbs_truncate(img, spec.gibbs_keep, spec.gibbs_axis)
    img = degrade.ghost(img, spec.ghost_amplitude, spec.ghost_axis)
    return degrade.rician(img, spec.noise_level * spec.gain, rng)


def _phase_image(masks: dict[str, np.ndarray], rng) -> np.ndarray:
    """Wrapped smooth phase inside the head, uniform random phase outside."""
    shape = masks["head"].shape
    field = degrade.bias_field(shape, 3.0, rng)
    phase = np.angle(np.exp(1j * 4 * np.log(field))).astype(np.float32)
    noise = rng.uniform(-np.pi, np.pi, shape).astype(np.float32)
    return np.where(masks["head"], phase, noise)


def write_spec(job: WriteJob) -> dict[str, Any]:
    """Generate the file for `job.spec`, its truth masks, and its truth row."""
    spec, root = job.spec, Path(job.root)
    rng = np.random.default_rng([spec.subject_seed, stable_int(spec.rel_path)])
    model = head_model()
    s2m = subject_to_mni(spec.subject_seed)
    grid = _grid(spec, model, s2m)
    masks = truth_masks(model, grid, s2m)
    path = job.image_path
    truth_dir = root / "truth" / "masks" / spec.dataset_id
    stem = _truth_stem(spec)
    row: dict[str, Any] = {}

    if spec.datatype == "dwi":
        row.update(_write_dwi(spec, root, grid, model, s2m, masks, rng, path))
        data_shape: tuple[int, ...] = (*grid.shape, row["n_volumes"])
    elif spec.kind == "label":
        labels = _labels(model, grid, s2m)
        save_nifti(labels, grid.affine, path, "uint8")
        data_shape = grid.shape
    elif spec.kind == "mask":
        save_nifti((masks["face"] & masks["head"]).astype(np.uint8), grid.affine, path, "uint8")
        data_shape = grid.shape
    else:
        data_shape = grid.shape
        if spec.flags == "phase":
            img = _phase_image(masks, rng)
        else:
            clean = resample(render(model, spec.contrast), model.affine, grid, s2m) * spec.gain
            img = _degrade(spec, clean, grid, rng)
        anon = np.zeros(grid.shape, bool)
        anat = masks["head"].copy()
        if spec.deface:
            anon = masks["face"] & masks["head"]
            img = degrade.deface(img, anon, spec.deface, grid.spacing)
            if spec.deface == "zero":
                anat &= ~anon
        if spec.skull_stripped:
            anon = masks["head"] & ~masks["brain"]
            anat = masks["brain"].copy()
            img = np.where(masks["brain"], img, 0)
        if spec.corruption == "nan":
            centre = tuple(slice(n // 2 - 3, n // 2 + 3) for n in grid.shape)
            img = img.astype(np.float32)
            img[centre] = np.nan
        elif spec.corruption == "zeros":
            img = np.zeros_like(img)
            anat[:] = False
        save_nifti(
            _quantize(img, spec.dtype, spec.scl_slope),
            grid.affine,
            path,
            spec.dtype,
            spec.scl_slope,
        )
        if spec.corruption not in ("truncated", "empty"):
            row["anat_mask_truth"] = _save_mask(anat, grid, truth_dir / f"{stem}_anat.nii.gz", root)
            row["anon_mask_truth"] = _save_mask(anon, grid, truth_dir / f"{stem}_anon.nii.gz", root)
        row["has_nan"] = spec.corruption == "nan"
        row["is_brain_extracted"] = spec.skull_stripped

    _corrupt(path, spec.corruption)
    row = {**_truth_row(spec, grid, data_shape, path, root), **row}
    write_if_changed(job.row_path, json.dumps(row, sort_keys=True))
    return row


def _truth_stem(spec: ImageSpec) -> str:
    """A flat, unique file stem for the truth files of one image."""
    return spec.rel_path.replace("/", "__").removesuffix(".nii.gz")


def _save_mask(mask: np.ndarray, grid: Grid, path: Path, root: Path) -> str:
    save_nifti(mask.astype(np.uint8), grid.affine, path, "uint8")
    return str(path.relative_to(root))


def _corrupt(path: Path, corruption: str | None) -> None:
    if corruption == "truncated":
        data = path.read_bytes()
        with atomic_path(path) as tmp:
            tmp.write_bytes(data[: len(data) * 2 // 5])
    elif corruption == "empty":
        with atomic_path(path) as tmp:
            tmp.write_bytes(b"")


def _labels(model: HeadModel, grid: Grid, s2m: np.ndarray) -> np.ndarray:
    """Tissue labels (0 background, 1 CSF, 2 GM, 3 WM) by maximum probability."""
    probs = [resample(p, model.affine, grid, s2m) for p in (model.csf, model.gm, model.wm)]
    stack = np.stack(probs)
    labels = (stack.argmax(0) + 1).astype(np.uint8)
    labels[stack.sum(0) < 0.5] = 0
    return labels


def _write_dwi(spec, root, grid, model, s2m, masks, rng, path) -> dict[str, Any]:
    ds = root / spec.dataset_id
    bvals = np.loadtxt(ds / spec.bval_path, ndmin=1)
    g_vox = fsl_to_voxel(np.loadtxt(ds / spec.bvec_path, ndmin=2), grid.affine)
    gtab = dwisim.GradientTable(bvals, g_vox)
    gm, wm, csf = (resample(p, model.affine, grid, s2m) for p in (model.gm, model.wm, model.csf))
    soft = np.isin(model.layer, [LAYERS["scalp"], LAYERS["muscle"], LAYERS["marrow"]])
    other = resample(soft.astype(np.float32), model.affine, grid, s2m)
    tensors = dwisim.tensor_field(gm, wm, csf, other)
    fa, md = dwisim.fa_md(tensors)
    s0 = resample(render(model, "b0"), model.affine, grid, s2m) * spec.gain
    signal = dwisim.simulate(s0, tensors, gtab)
    sigma = spec.gain * 0.5 / spec.dwi_snr  # SNR relative to white matter's b0
    data = degrade.rician(signal, sigma, rng)
    save_nifti(_quantize(data, spec.dtype), grid.affine, path, spec.dtype)
    truth = root / "truth" / "dwi" / spec.dataset_id
    stem = _truth_stem(spec)
    out = {"noise_sigma": sigma, "n_volumes": len(bvals), "is_brain_extracted": False}
    maps = [
        ("fa_truth", fa, "float32"),
        ("md_truth", md, "float32"),
        ("brain_mask_truth", masks["brain"], "uint8"),
        ("anat_mask_truth", masks["head"], "uint8"),
    ]
    for key, arr, dtype in maps:
        p = truth / f"{stem}_{key.removesuffix('_truth')}.nii.gz"
        save_nifti(arr.astype(dtype), grid.affine, p, dtype)
        out[key] = str(p.relative_to(root))
    return out


def _truth_row(spec: ImageSpec, grid: Grid, shape, path: Path, root: Path) -> dict[str, Any]:
    header_status = {"truncated": "corrupt", "empty": "empty"}.get(spec.corruption or "", "ok")
    row = {k: v for k, v in asdict(spec).items() if k not in ("entities", "dwi_shells", "sidecar")}
    row.update(
        image_id=image_id(spec.dataset_id, spec.rel_path),
        path=str(path.relative_to(root)),
        rel_path=spec.rel_path,
        entities=json.dumps(dict(spec.entities)),
        dwi_shells=json.dumps(dict(spec.dwi_shells)) if spec.dwi_shells else None,
        sidecar=spec.sidecar if spec.kind == "image" else None,
        is_derivative=spec.kind == "label",
        shape=list(shape),
        spacing=[round(s, 5) for s in grid.spacing],
        n_volumes=shape[3] if len(shape) == 4 else 1,
        header_status=header_status,
        axcodes="".join(nib.aff2axcodes(grid.affine)),
        size_bytes=os.path.getsize(path),
        noise_sigma=spec.noise_level * spec.gain,
    )
    return row
