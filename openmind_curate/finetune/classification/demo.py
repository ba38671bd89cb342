"""The demo's classification step: which contrast, T1w or T2w, an image is.

The generated corpus has T1w images of 10 subjects and T2w images of 7 (5
datasets); PDw and FLAIR are in too few subjects for five folds. The table
takes one readable image per subject and contrast (the index's
``header_status`` ok, no derived maps), so each class has a subject in every
fold. Both runs share the preprocessed volumes (`DEMO`: 2 mm, the demo
encoder's spacing, resized to 16^3) and train the demo encoder's tiny
network for 24 epochs: from scratch (its architecture, fresh weights) and
from its pre-trained weights. Toy sizes for a CPU: lr 1e-2 (the paper's 1e-4
learns nothing in so few steps), 2 warm-up epochs, batches of 2 without
accumulation (the 13 or so training images of a fold give 7 steps an
epoch). Measured on 2 cores: both runs with the preprocessing 24 s; 12
epochs left most held-out T2w images just under the threshold (balanced
accuracy 0.6), 24 classify every held-out image right.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from openmind_curate.finetune.classification.run import ClassifyConfig, ClassifyResult, Echo
from openmind_curate.finetune.classification.run import classify as run_classify

CLASSES = ("T1w", "T2w")
#: The demo's sizes (see the module doc).
DEMO = {
    "resize": (16, 16, 16),
    "spacing": 2.0,
    "epochs": 24,
    "warmup_epochs": 2,
    "batch": 2,
    "accumulate": 1,
    "lr": 1e-2,
}


def contrast_table(index: Path, path: Path) -> Path:
    """One readable image per subject and contrast of `CLASSES`, as a table
    of image_id and modality (the label)."""
    from openmind_curate import index as store
    from openmind_curate.atomic import atomic_path

    frame = store.read(index).to_pandas()
    keep = (
        frame["modality"].isin(CLASSES)
        & (frame["header_status"] == "ok")
        & frame["derived_from"].isna()
    )
    picked = (
        frame[keep]
        .sort_values(["dataset_id", "subject", "modality", "path"])
        .groupby(["dataset_id", "subject", "modality"])
        .head(1)
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        picked[["image_id", "modality"]].to_parquet(tmp, index=False)
    return path


def classification_demo(
    index: Path, pretrained: Path, out: Path, workers: int | None = None, echo: Echo = print
) -> dict[str, ClassifyResult]:
    """The contrast task from scratch (``OUT/scratch``) and from `pretrained`
    (``OUT/pretrained``), five folds each; each run's result."""
    table = contrast_table(index, Path(out) / "contrast.parquet")
    tuned = ClassifyConfig(
        data=table,
        label="modality",
        out=Path(out) / "pretrained",
        pretrained=Path(pretrained),
        index=Path(index),
        volumes=Path(out) / "volumes",
        workers=workers,
        progress=False,
        resume=(Path(out) / "pretrained").exists(),
        **DEMO,
    )
    scratch = replace(tuned, scratch=True, out=Path(out) / "scratch")
    scratch = replace(scratch, resume=scratch.out.exists())
    return {
        name: run_classify(c, echo) for name, c in (("scratch", scratch), ("pretrained", tuned))
    }
