"""Labelled segmentation data for fine-tuning: nnU-Net's raw layout or the
generated corpus's tissue labels, resampled and normalized like pre-training.

Two sources, told apart by what the folder holds:

- nnU-Net raw layout: ``dataset.json`` (``labels``, ``channel_names``,
  optionally ``file_ending``), ``imagesTr/<case>_0000.nii.gz`` (one file per
  channel) and ``labelsTr/<case>.nii.gz``;
- the generated corpus (``curate synth``): ``truth/images.parquet``; every file
  of kind "label" is paired with the image of the same dataset, subject,
  session, datatype and contrast (kind "image", same shape and spacing).

Each case is read as `curate preprocess` reads pre-training images (its
helpers): reoriented to LPS, resampled with SimpleITK to the target spacing on
a grid centred on the field of view (linear for images, nearest neighbour for
labels), and z-scored over its nonzero voxels (zero stays zero).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from openmind_curate.preflight import InputError

SYNTH_TISSUE_LABELS = {0: "background", 1: "CSF", 2: "GM", 3: "WM"}


@dataclass(frozen=True)
class CaseFiles:
    case_id: str
    images: tuple[Path, ...]  # one per channel
    label: Path


@dataclass
class SegSource:
    """The cases of a labelled dataset and its classes (index -> name, 0 = background)."""

    kind: str  # "nnunet" | "synth"
    root: Path
    cases: list[CaseFiles]
    labels: dict[int, str]
    channels: int = 1

    @property
    def n_classes(self) -> int:
        return max(self.labels) + 1


@dataclass
class SegCase:
    case_id: str
    image: np.ndarray  # float32 (C, D, H, W), LPS-oriented
    label: np.ndarray  # uint8 (D, H, W)


def _nnunet_labels(doc: dict, path: Path) -> dict[int, str]:
    raw = doc.get("labels")
    if not isinstance(raw, dict) or not raw:
        raise InputError(f"{path}: 'labels' must be a non-empty mapping")
    out: dict[int, str] = {}
    for k, v in raw.items():
        if isinstance(v, int | float) and not isinstance(v, bool):  # v2: name -> index
            out[int(v)] = str(k)
        elif isinstance(v, str) and str(k).lstrip("-").isdigit():  # v1: "index" -> name
            out[int(k)] = v
        else:
            raise InputError(
                f"{path}: label {k!r}: {v!r} is not a class index (regions are not supported)"
            )
    if sorted(out) != list(range(len(out))):
        raise InputError(f"{path}: label indices {sorted(out)} must be 0, 1, ... without gaps")
    return out


def read_nnunet_raw(root: Path) -> SegSource:
    """The training cases of an nnU-Net raw dataset folder."""
    path = root / "dataset.json"
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {path}: {exc}") from None
    labels = _nnunet_labels(doc, path)
    channels = doc.get("channel_names") or doc.get("modality")
    if not isinstance(channels, dict) or not channels:
        raise InputError(f"{path}: 'channel_names' must be a non-empty mapping")
    n_ch = len(channels)
    ending = str(doc.get("file_ending", ".nii.gz"))
    images, labels_dir = root / "imagesTr", root / "labelsTr"
    for d in (images, labels_dir):
        if not d.is_dir():
            raise InputError(f"{root}: no {d.name} folder (nnU-Net raw layout)")
    cases = []
    for label in sorted(labels_dir.glob(f"*{ending}")):
        case = label.name[: -len(ending)]
        files = tuple(images / f"{case}_{c:04d}{ending}" for c in range(n_ch))
        missing = [f.name for f in files if not f.exists()]
        if missing:
            raise InputError(f"{root}: case {case} lacks {', '.join(missing)} in imagesTr")
        cases.append(CaseFiles(case, files, label))
    if not cases:
        raise InputError(f"{labels_dir}: no label files ending in {ending}")
    return SegSource("nnunet", root, cases, labels, n_ch)


def _synth_label_names(root: Path, dataset_ids: Sequence[str]) -> dict[int, str]:
    for ds in dataset_ids:
        tsv = root / ds / "derivatives" / "labels" / "desc-tissue_dseg.tsv"
        if tsv.exists():
            rows = [line.split("\t") for line in tsv.read_text().splitlines()[1:] if line]
            names = {int(r[0]): (r[2] if len(r) > 2 else r[1]) for r in rows}
            if sorted(names) == list(range(len(names))):
                return names
    return dict(SYNTH_TISSUE_LABELS)


def read_synth_corpus(root: Path) -> SegSource:
    """The generated corpus's tissue label maps paired with their images."""
    import pandas as pd

    truth_path = root / "truth" / "images.parquet"
    try:
        truth = pd.read_parquet(truth_path)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {truth_path}: {exc}") from None
    key = ["dataset_id", "subject", "session", "datatype", "contrast"]
    truth = truth.assign(session=truth["session"].fillna(""))
    ok = truth["corruption"].isna() if "corruption" in truth else True
    images = truth[(truth["kind"] == "image") & ok & (truth["suffix"] == truth["contrast"])]
    images = images.assign(_shape=images["shape"].map(tuple), _sp=images["spacing"].map(tuple))
    cases = []
    for row in truth[truth["kind"] == "label"].itertuples(index=False):
        match = images
        for k in key:
            match = match[match[k] == getattr(row, k)]
        match = match[(match["_shape"] == tuple(row.shape)) & (match["_sp"] == tuple(row.spacing))]
        if len(match) != 1:
            continue  # no unique image for this label map
        image = match.iloc[0]
        ses = f"_ses-{row.session}" if row.session else ""
        case = f"{row.dataset_id}_sub-{row.subject}{ses}"
        cases.append(CaseFiles(case, (root / image["path"],), root / row.path))
    if not cases:
        raise InputError(f"{root}: the corpus's truth table has no label map with its image")
    names = _synth_label_names(root, sorted({c.case_id.split("_")[0] for c in cases}))
    return SegSource("synth", root, cases, names, 1)


def read_source(root: Path) -> SegSource:
    """nnU-Net raw layout (dataset.json) or the generated corpus (truth table)."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"--data {root}: not a folder")
    if (root / "dataset.json").exists():
        return read_nnunet_raw(root)
    if (root / "truth" / "images.parquet").exists():
        return read_synth_corpus(root)
    raise InputError(
        f"--data {root}: neither an nnU-Net raw dataset (dataset.json, imagesTr, "
        "labelsTr) nor a generated corpus (truth/images.parquet)"
    )


def _read(path: Path):
    """The volume as an LPS-oriented SimpleITK image (as `curate preprocess` does)."""
    from openmind_curate.nifti_io import NiftiReadError, load_nifti
    from openmind_curate.train.preprocess import _oriented

    try:
        data, affine = load_nifti(path)
    except NiftiReadError as exc:
        raise InputError(str(exc)) from None
    if data.ndim == 4:
        data = data[..., 0]
    return _oriented(data, affine)


def _on_grid(img, spacing: Sequence[float] | None, *, linear: bool) -> np.ndarray:
    """`img` resampled to `spacing` mm isotropic on pre-training's grid (same
    direction, centred on the field of view); None keeps its own grid."""
    from openmind_curate.train.preprocess import _reference, _resample

    if spacing is not None and len(set(spacing)) != 1:
        raise InputError(f"spacing {tuple(spacing)}: only isotropic spacings are supported")
    return _resample(img, _reference(img, None if spacing is None else spacing[0]), linear)


def normalize(data: np.ndarray, method: str = "zscore") -> np.ndarray:
    """Z-score over the nonzero voxels (pre-training's normalization); zero stays zero."""
    if method != "zscore":
        raise InputError(f"normalization {method!r} is not supported (only 'zscore')")
    data = np.nan_to_num(data.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    fg = data != 0
    vals = data[fg] if fg.any() else data.ravel()
    mean, std = float(vals.mean()), float(vals.std())
    out = (data - mean) / max(std, 1e-8)
    out[~fg] = 0.0
    return out.astype(np.float32)


def load_case(
    files: CaseFiles,
    spacing: Sequence[float] | None,
    normalization: str = "zscore",
    n_classes: int | None = None,
) -> SegCase:
    """One case as pre-training saw its images: reoriented to LPS, resampled to
    `spacing` mm (None: native; linear for images, nearest neighbour for the
    label map) and normalized."""
    label_img = _read(files.label)
    channels = []
    for path in files.images:
        img = _read(path)
        if img.GetSize() != label_img.GetSize():
            raise InputError(
                f"{path}: size {img.GetSize()} differs from its label map's "
                f"{label_img.GetSize()} ({files.label})"
            )
        channels.append(normalize(_on_grid(img, spacing, linear=True), normalization))
    label = np.rint(_on_grid(label_img, spacing, linear=False))
    if label.min() < 0 or (n_classes is not None and label.max() >= n_classes):
        raise InputError(
            f"{files.label}: label values {int(label.min())}..{int(label.max())} "
            f"outside 0..{(n_classes or 256) - 1}"
        )
    return SegCase(files.case_id, np.stack(channels).astype(np.float32), label.astype(np.uint8))


def split_cases(case_ids: Sequence[str], fraction: float = 0.2, seed: int = 0):
    """A fixed (seeded) validation split: at least one case each side."""
    ids = sorted(case_ids)
    if len(ids) < 2:
        raise InputError(f"need at least 2 labelled cases (one to validate on), found {len(ids)}")
    n_val = min(len(ids) - 1, max(1, int(round(fraction * len(ids)))))
    order = np.random.default_rng(seed).permutation(len(ids))
    val = sorted(ids[i] for i in order[:n_val])
    return [c for c in ids if c not in val], val


def random_patch(
    case: SegCase, patch: Sequence[int], rng: np.random.Generator, fg_prob: float = 0.33
) -> tuple[np.ndarray, np.ndarray]:
    """A random patch (zero-padded where the case is smaller); with `fg_prob`
    centred on a random foreground voxel (nnU-Net's foreground oversampling)."""
    shape = case.label.shape
    fg_centre = None
    if rng.random() < fg_prob:
        idx = np.flatnonzero(case.label)
        if idx.size:
            fg_centre = np.unravel_index(idx[rng.integers(idx.size)], shape)
    starts = []
    for ax, (n, p) in enumerate(zip(shape, patch, strict=True)):
        lo, hi = min(0, n - p), max(0, n - p)
        if fg_centre is not None:
            s = int(np.clip(fg_centre[ax] - p // 2, lo, hi))
        else:
            s = int(rng.integers(lo, hi + 1))
        starts.append(s)
    image = np.zeros((case.image.shape[0], *patch), np.float32)
    label = np.zeros(tuple(patch), np.uint8)
    src = tuple(
        slice(max(s, 0), min(s + p, n)) for s, p, n in zip(starts, patch, shape, strict=True)
    )
    dst = tuple(slice(a.start - s, a.stop - s) for a, s in zip(src, starts, strict=True))
    image[(slice(None), *dst)] = case.image[(slice(None), *src)]
    label[dst] = case.label[src]
    return image, label
