"""The demo's classification step: is an image T1- or T2-weighted?

The generated corpus has T1w images of 10 subjects; its T2-weighted images
(T2w in two datasets, T2*w in a third) are of 6. T2w alone is in 4 subjects,
PDw and FLAIR in 2: too few for every one of five folds to hold the class.
The table (`weighting_table`) takes one image per subject and weighting,
readable by its header (the index's ``header_status`` ok, no derived maps;
the volumes stage still leaves out one with NaN voxels, and says so),
preferring T2w to T2*w. Both runs share the preprocessed volumes (`DEMO`:
2 mm, the demo encoder's spacing, resized to 16^3) and train the demo
encoder's tiny network for 24 epochs: from scratch (its architecture, fresh
weights) and from its pre-trained weights. Toy sizes for a CPU: lr 1e-2 (the
paper's 1e-4 learns nothing in so few steps), 2 warm-up epochs, batches of 4
without accumulation (the 10 to 12 training images of a fold give 3 steps an
epoch), a checkpoint every 8 epochs. Measured on 2 cores: the demo's step 19
s with its volumes, every held-out image right in both runs; batches of 2
took 29 s and left one fold of the pre-trained run at 0.5, and 12 epochs
left most held-out T2-weighted images just under the threshold.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from openmind_curate.finetune.classification.run import ClassifyConfig, ClassifyResult, Echo
from openmind_curate.finetune.classification.run import classify as run_classify

#: modality -> the label; the order of preference within a subject and label
WEIGHTING = {"T1w": "T1", "T2w": "T2", "T2starw": "T2"}
#: The demo's sizes (see the module doc).
DEMO = {
    "resize": (16, 16, 16),
    "spacing": 2.0,
    "epochs": 24,
    "warmup_epochs": 2,
    "batch": 4,
    "accumulate": 1,
    "lr": 1e-2,
    "checkpoint_epochs": 8,
}


def weighting_table(index: Path, path: Path) -> Path:
    """One image per subject and weighting (`WEIGHTING`), as a table of
    image_id and ``weighting`` (the label)."""
    from openmind_curate import index as store
    from openmind_curate.atomic import atomic_path

    frame = store.read(index).to_pandas()
    keep = (
        frame["modality"].isin(list(WEIGHTING))
        & (frame["header_status"] == "ok")
        & frame["derived_from"].isna()
    )
    frame = frame[keep].assign(
        weighting=lambda f: f["modality"].map(WEIGHTING),
        preference=lambda f: f["modality"].map({m: i for i, m in enumerate(WEIGHTING)}),
    )
    picked = (
        frame.sort_values(["dataset_id", "subject", "weighting", "preference", "path"])
        .groupby(["dataset_id", "subject", "weighting"])
        .head(1)
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        picked[["image_id", "weighting"]].to_parquet(tmp, index=False)
    return path


def classification_demo(
    index: Path, pretrained: Path, out: Path, workers: int | None = None, echo: Echo = print
) -> dict[str, ClassifyResult]:
    """T1 or T2 from scratch (``OUT/scratch``) and from `pretrained`
    (``OUT/pretrained``), five folds each; each run's result."""
    table = weighting_table(index, Path(out) / "weighting.parquet")
    tuned = ClassifyConfig(
        data=table,
        label="weighting",
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
