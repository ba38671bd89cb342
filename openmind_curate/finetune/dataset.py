"""Labelled segmentation data for fine-tuning, as an nnU-Net raw dataset.

Two sources, told apart by what the folder holds:

- nnU-Net raw layout: ``dataset.json`` (``labels``, ``channel_names``,
  optionally ``file_ending``), ``imagesTr/<case>_0000.nii.gz`` (one file per
  channel) and ``labelsTr/<case>.nii.gz``;
- the generated corpus (``curate synth``): ``truth/images.parquet``; every file
  of kind "label" is paired with the image of the same dataset, subject,
  session, datatype and contrast (kind "image", same shape and spacing).

`write_raw` lays either out as an nnU-Net raw dataset inside the run folder
(links to the input files, and a ``dataset.json``); nnU-Net then checks,
resamples and normalizes the cases itself.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from openmind_curate.errors import InputError

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
    channel_names: tuple[str, ...] = ("T1w",)

    @property
    def channels(self) -> int:
        return len(self.channel_names)

    @property
    def n_classes(self) -> int:
        return max(self.labels) + 1


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
    try:
        names = tuple(str(channels[k]) for k in sorted(channels, key=int))
    except ValueError:
        raise InputError(f"{path}: 'channel_names' keys must be 0, 1, ...") from None
    n_ch = len(names)
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
    return SegSource("nnunet", root, cases, labels, names)


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
    return SegSource("synth", root, cases, names)


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


FILE_ENDING = ".nii.gz"


def dataset_folder_name(root: Path, dataset_id: int) -> str:
    """``DatasetNNN_Name``: the input's own name when it is one, else the folder's."""
    m = re.fullmatch(r"Dataset(\d{3})_([A-Za-z0-9_\-]+)", root.name)
    if m:
        return root.name
    name = re.sub(r"[^A-Za-z0-9]+", "", root.name.title()) or "Data"
    return f"Dataset{dataset_id:03d}_{name}"


def write_raw(source: SegSource, dest: Path) -> Path:
    """`source` as an nnU-Net raw dataset at `dest` (``imagesTr``, ``labelsTr``,
    ``dataset.json``), its files linked, not copied; returns `dest`."""
    from openmind_curate.atomic import atomic_write_text

    images, labels = dest / "imagesTr", dest / "labelsTr"
    for folder in (images, labels):
        folder.mkdir(parents=True, exist_ok=True)
    for case in source.cases:
        for c, image in enumerate(case.images):
            _link(image, images / f"{case.case_id}_{c:04d}{FILE_ENDING}")
        _link(case.label, labels / f"{case.case_id}{FILE_ENDING}")
    doc = {
        "channel_names": {str(i): name for i, name in enumerate(source.channel_names)},
        # nnU-Net insists that label 0 is called "background"
        "labels": {
            ("background" if index == 0 else name): index
            for index, name in sorted(source.labels.items())
        },
        "numTraining": len(source.cases),
        "file_ending": FILE_ENDING,
        "source": str(source.root),
    }
    atomic_write_text(dest / "dataset.json", json.dumps(doc, indent=2))
    return dest


def _link(src: Path, dst: Path) -> None:
    """A symbolic link to `src` (absolute), replacing a stale one; a gzip'd
    copy when `src` is an uncompressed NIfTI (nnU-Net wants one file ending)."""
    src = Path(src).resolve()
    if dst.is_symlink() or dst.exists():
        if dst.is_symlink() and dst.resolve() == src:
            return
        dst.unlink()
    if src.name.endswith(FILE_ENDING):
        dst.symlink_to(src)
        return
    import nibabel as nib

    nib.save(nib.load(src), dst)


def write_toy_dataset(root: Path, n_cases: int = 5, n: int = 24, seed: int = 0) -> Path:
    """A known-answer nnU-Net raw dataset at `root`: `n_cases` volumes of n^3
    at 1 mm, each a bright ball (label 1, "ball") and a dark box (label 2,
    "box") in noise, plainly visible. For tests and benchmarks."""
    import nibabel as nib
    import numpy as np

    rng = np.random.default_rng(seed)
    grid = np.indices((n, n, n))
    for i in range(n_cases):
        centre = rng.uniform(0.3 * n, 0.7 * n, 3)
        label = np.zeros((n, n, n), np.uint8)
        radius2 = rng.uniform(0.12, 0.2) * n * n * 0.5
        label[((grid - centre[:, None, None, None]) ** 2).sum(0) < radius2] = 1
        edge = max(2, n // 4)
        box = tuple(slice(a, a + edge) for a in rng.integers(1, n - edge - 1, 3))
        label[box] = np.where(label[box] == 0, 2, label[box])
        image = 100.0 + np.select([label == 1, label == 2], [60.0, -60.0], 0.0)
        image = (image + rng.normal(0, 4, image.shape)).astype(np.float32)
        for folder, name, data in (
            ("imagesTr", f"toy_{i:03d}_0000{FILE_ENDING}", image),
            ("labelsTr", f"toy_{i:03d}{FILE_ENDING}", label),
        ):
            (root / folder).mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(data, np.eye(4)), str(root / folder / name))
    doc = {
        "channel_names": {"0": "MRI"},
        "labels": {"background": 0, "ball": 1, "box": 2},
        "numTraining": n_cases,
        "file_ending": FILE_ENDING,
    }
    (root / "dataset.json").write_text(json.dumps(doc, indent=2))
    return root
