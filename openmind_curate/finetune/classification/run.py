"""`curate finetune --task classification`: five-fold classification fine-tuning.

``RUN/`` holds everything::

    RUN/volumes/<case_id>.npy, .json   preprocessed, resized volumes (`volumes`)
    RUN/fold_K/checkpoint.pt           the trainer loop's checkpoint (resume)
    RUN/fold_K/log.jsonl, loss.png     per-step loss and learning rate
    RUN/fold_K/classifier.pt           the trained classifier and what it needs
    RUN/fold_K/predictions.csv         each held-out image's probabilities
    RUN/fold_K/metrics.json, confusion.png
    RUN/classification.json            every fold's metrics and their mean
    RUN/confusion.png                  the held-out predictions of all folds run

A fold trains on the other four folds' images through the one trainer loop
(`train.trainer`, the `method.Classify` method, batches of `batches`), then
rank 0 predicts the held-out fold from the saved weights (`evaluate`). With
``resume`` a fold with a checkpoint goes on from it and one without starts.

Under torchrun the process group starts once for all folds; rank 0 prepares
the volumes while the other ranks wait for its result (a file named after the
batch and the job, removed once every rank has read it).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from openmind_curate.atomic import atomic_write_text
from openmind_curate.errors import InputError
from openmind_curate.finetune.classification import metrics, volumes
from openmind_curate.finetune.classification.batches import EpochBatches
from openmind_curate.finetune.classification.evaluate import evaluate
from openmind_curate.finetune.classification.folds import FOLDS, assign_folds
from openmind_curate.finetune.classification.method import BATCH, RESIZE, Classify, ClassifyParams
from openmind_curate.finetune.classification.table import Table, read_table
from openmind_curate.jobs import JobOptions
from openmind_curate.train import models, nnssl
from openmind_curate.train.trainer import TrainConfig, barrier, process_group, train

Echo = Callable[[str], None]


@dataclass(frozen=True)
class ClassifyConfig:
    """A classification run (the CLI's options; None: the recipe's)."""

    data: Path
    label: str
    out: Path
    resize: tuple[int, int, int] = RESIZE
    pretrained: Path | None = None
    scratch: bool = False  # the checkpoint's network, not its weights
    arch: str = "resenc-l"  # without --pretrained
    frozen: bool = False  # --schedule frozen: the head alone trains
    epochs: int = 200
    warmup_epochs: int | None = None  # None: 20 (C.2), cut to a shorter run's epochs
    batch: int | None = None  # volumes per forward (the micro-batch)
    accumulate: int | None = None  # micro-batches per optimizer step
    lr: float | None = None
    folds: tuple[int | str, ...] = ("all",)
    spacing: str | float = "pretrained"  # "pretrained" | mm
    index: Path | None = None
    volumes: Path | None = None  # default RUN/volumes
    seed: int = 0
    amp: str = "auto"  # auto: bf16 on a GPU, none on a CPU
    resume: bool = False
    workers: int | None = None
    progress: bool = True
    device: str = ""
    stop_after: int | None = None  # a fold stops (checkpointed) after this many steps in all
    checkpoint_epochs: int = 1  # epochs between checkpoints (and one at the end)


@dataclass
class FoldResult:
    fold: int
    scores: dict[str, Any]
    train_images: int
    steps: int


@dataclass
class ClassifyResult:
    classes: list[str]
    folds: list[FoldResult]
    mean: dict[str, float | None]
    pooled: dict[str, Any] | None
    summary: Path | None
    rejected: list[tuple[str, str]] = field(default_factory=list)
    signal: int | None = None  # the run stopped on SIGINT/SIGTERM (checkpoint written)
    complete: bool = True  # False: a fold stopped early (a signal, `stop_after`)


@dataclass(frozen=True)
class Network:
    """The network a run trains: its architecture entry, our name for its
    family's loop settings, the checkpoint to load, and the spacing to
    preprocess at (None: each image's own)."""

    architecture: dict[str, Any]
    arch: str
    family: str
    pretrained: nnssl.Pretrained | None
    spacing: float | None


def network_for(config: ClassifyConfig) -> Network:
    """The checkpoint's network (or `config.arch`'s) and its spacing."""
    pretrained = nnssl.read_pretrained(config.pretrained) if config.pretrained else None
    if pretrained is None:
        if config.scratch:
            raise InputError("--scratch trains a checkpoint's network: give --pretrained")
        models.arch_config(config.arch)
        arch, family, architecture = config.arch, models.family(config.arch), None
    else:
        family = pretrained.family
        # our name for the loop's family settings; the network is `architecture`
        proxy = "primus-m" if family == "primus" else "resenc-l"
        arch = pretrained.arch if pretrained.arch in models.ARCHS else proxy
        architecture = pretrained.architecture
    if config.spacing == "pretrained":
        spacing = pretrained.spacing if pretrained else (1.0, 1.0, 1.0)
        iso = None if spacing is None else float(spacing[0])
    else:
        iso = float(config.spacing)
    return Network(
        architecture or nnssl.architecture(arch),
        arch,
        family,
        None if config.scratch else pretrained,
        iso,
    )


def check(config: ClassifyConfig, net: Network, classes: int, world: int) -> None:
    """Refuse, before any volume is made, what the run could not train."""
    for name in ("epochs", "batch", "accumulate"):
        value = getattr(config, name)
        if value is not None and value < 1:
            raise InputError(f"--{name} {value}: give 1 or more")
    if config.warmup_epochs is not None and not 0 <= config.warmup_epochs <= config.epochs:
        raise InputError(f"--warmup-epochs {config.warmup_epochs}: give 0 .. --epochs")
    if config.lr is not None and not config.lr > 0:
        raise InputError(f"--lr {config.lr}: give a positive rate")
    if config.accumulate and config.accumulate % world:
        raise InputError(f"--accumulate {config.accumulate} does not split over {world} GPUs")
    params = ClassifyParams(classes, tuple(config.resize), config.frozen, "", net.architecture)
    Classify(params, net.arch, RESIZE[0]).check()


def step_sizes(
    config: ClassifyConfig, family: str, n_train: int, world: int, echo: Echo
) -> tuple[int, int]:
    """(micro-batch, accumulation): the options, else the paper's for the
    family, cut so that one step is no more than the training images (the
    accumulation staying a multiple of the GPUs)."""
    micro, acc = BATCH.get(family, BATCH["resenc"])
    micro = min(config.batch or micro, n_train)
    acc = config.accumulate or acc
    if micro * acc > n_train:
        fit = max(world, n_train // micro // world * world)
        echo(
            f"a step of {micro} x {acc} volumes is more than the {n_train} training images: "
            f"accumulating {fit} instead"
        )
        acc = fit
    return micro, acc


def classify(config: ClassifyConfig, echo: Echo = print) -> ClassifyResult:
    """Read, preprocess, split, and train and evaluate each chosen fold."""
    import torch

    if config.amp == "auto":
        config = replace(config, amp="bf16" if torch.cuda.is_available() else "none")
    with process_group() as dist:
        if dist.world > 1 and torch.cuda.is_available():
            torch.cuda.set_device(dist.local_rank)  # NCCL's barriers before the first fold
        if dist.rank != 0:  # under torchrun rank 0 speaks for all
            echo = _silent
        _refuse_unfinished(Path(config.out), config.resume)
        table = read_table(config.data, config.label, config.index)
        for note in table.notes:
            echo(note)
        net = network_for(config)
        check(config, net, len(table.classes), dist.world)
        cases, rejected = _prepared(table, config, net, dist, echo)
        fold_of = assign_folds(cases["label"], cases["subject"], config.seed)
        chosen = list(range(FOLDS)) if "all" in config.folds else [int(f) for f in config.folds]
        done: list[FoldResult] = []
        for k in chosen:
            result, stopped = _fold(config, net, table.classes, cases, fold_of, k, dist, echo)
            if stopped is not None:
                return ClassifyResult(
                    table.classes, done, {}, None, None, rejected, stopped or None, False
                )
            if result is not None:
                done.append(result)
        if dist.rank != 0:
            return ClassifyResult(table.classes, done, {}, None, None, rejected)
        return _summarise(config, table, net, done, rejected)


def _silent(_: str) -> None:
    pass


def _refuse_unfinished(out: Path, resume: bool) -> None:
    if not resume and any(out.glob("fold_*/checkpoint.pt")):
        raise InputError(
            f"{out} already holds a classification run; run the same command with "
            "--continue to go on, or choose another --out"
        )


def _prepared(
    table: Table, config: ClassifyConfig, net: Network, dist, echo: Echo
) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """The cases whose volume is ready; the others named with their reason.
    Under torchrun rank 0 makes the volumes and the others wait for it."""
    root = Path(config.volumes or Path(config.out) / "volumes")
    options = JobOptions(workers=config.workers, progress=config.progress, description="volumes")
    vc = volumes.VolumeConfig(net.spacing, tuple(int(s) for s in config.resize))
    key = volumes.batch_key(table.cases, vc)
    if dist.rank == 0:
        status = volumes.prepare_volumes(table.cases, root, vc, options)
        if dist.world > 1:
            volumes.publish(root, key, status)
    else:
        status = volumes.wait_published(table.cases, root, key)
    barrier(dist)  # every rank has read rank 0's result
    if dist.rank == 0 and dist.world > 1:
        volumes.published(root, key).unlink(missing_ok=True)
    bad = status[status["status"] != "ok"]
    rejected = [(str(r.path), str(r.reason)) for r in bad.itertuples(index=False)]
    for path, reason in rejected:
        echo(f"left out {path}: {reason}")
    ok = status[status["status"] == "ok"].reset_index(drop=True)
    ok = ok.assign(label_index=ok["label"].map({c: i for i, c in enumerate(table.classes)}))
    return ok.assign(root=str(root)), rejected


def _fold(
    config: ClassifyConfig,
    net: Network,
    classes: list[str],
    cases: pd.DataFrame,
    fold_of: np.ndarray,
    k: int,
    dist,
    echo: Echo,
) -> tuple[FoldResult | None, int | None]:
    """Train fold `k` and (rank 0) evaluate it. Second: None when the fold is
    complete, else the signal that stopped it (0: `stop_after`)."""
    train_cases = cases[fold_of != k].reset_index(drop=True)
    held = cases[fold_of == k].reset_index(drop=True)
    micro, acc = step_sizes(config, net.family, len(train_cases), dist.world, echo)
    tc = fold_config(config, net, classes, train_cases, k, micro * acc, acc // dist.world)
    root = Path(cases["root"].iloc[0])
    ids, labels = list(train_cases["case_id"]), train_cases["label_index"].to_numpy()
    batches = EpochBatches(root, ids, labels, tc.global_batch, tc.iters_per_epoch, config.seed)
    echo(
        f"fold {k}: {len(train_cases)} training images, {len(held)} held out; "
        f"{tc.epochs} epochs of {tc.iters_per_epoch} step(s) of {micro} x {acc}"
    )
    result = train(tc, batches)
    if result.signal is not None or not result.complete:
        return None, result.signal or 0
    scores = None
    if dist.rank == 0:
        meta = {
            "architecture": net.architecture,
            "resize": list(config.resize),
            "spacing": net.spacing,
            "frozen": config.frozen,
        }
        scores = evaluate(tc, classes, held, root, micro, meta)
    barrier(dist)  # the other ranks wait for rank 0's evaluation
    if scores is None:
        return None, None
    return FoldResult(k, scores, len(train_cases), result.steps), None


def fold_config(
    config: ClassifyConfig,
    net: Network,
    classes: list[str],
    train_cases: pd.DataFrame,
    k: int,
    global_batch: int,
    accumulate: int,
) -> TrainConfig:
    """The trainer's config for fold `k` (`data` fingerprints its images and
    labels, so the ranks and a resume must train on the same ones)."""
    pairs = zip(train_cases["case_id"], train_cases["label_index"], strict=True)
    ids = "".join(f"{c}:{y};" for c, y in pairs)
    out = Path(config.out) / f"fold_{k}"
    steps = math.ceil(len(train_cases) / global_batch)
    return TrainConfig(
        out=str(out),
        arch=net.arch,
        method=Classify.name,
        params={
            "classes": len(classes),
            "resize": tuple(int(s) for s in config.resize),
            "frozen": config.frozen,
            "pretrained": str(net.pretrained.path) if net.pretrained else "",
            "architecture": net.architecture,
        },
        global_batch=global_batch,
        epochs=config.epochs,
        iters_per_epoch=steps,
        checkpoint_every=steps * config.checkpoint_epochs,
        lr=config.lr,
        warmup_epochs=config.warmup_epochs,  # None: the recipe's 20, cut to the epochs
        schedule="cosine",
        amp=config.amp,
        seed=config.seed,
        val_every=0,
        resume=config.resume and (out / "checkpoint.pt").is_file(),
        spacing="native" if net.spacing is None else (net.spacing,) * 3,
        data=f"fold {k} " + hashlib.sha1(ids.encode()).hexdigest()[:16],
        progress=config.progress,
        device=config.device,
        accumulate=accumulate,
        stop_after=config.stop_after,
    )


def _mean(values: list[float | None]) -> float | None:
    found = [v for v in values if v is not None]
    return float(np.mean(found)) if found else None


def _summarise(
    config: ClassifyConfig,
    table: Table,
    net: Network,
    done: list[FoldResult],
    rejected: list[tuple[str, str]],
) -> ClassifyResult:
    """classification.json and the pooled confusion matrix of the folds run."""
    out = Path(config.out)
    mean = {
        "balanced_accuracy": _mean([f.scores["balanced_accuracy"] for f in done]),
        "average_precision": _mean([f.scores["average_precision"] for f in done]),
    }
    pooled = None
    if done:
        confusion = np.sum([np.array(f.scores["confusion"]) for f in done], axis=0)
        pooled = {"confusion": confusion.tolist(), "folds": [f.fold for f in done]}
        metrics.plot_confusion(
            confusion,
            table.classes,
            out / "confusion.png",
            f"held-out folds {', '.join(str(f.fold) for f in done)} pooled",
        )
    doc = {
        "task": "classification",
        "label": config.label,
        "classes": table.classes,
        "config": json.loads(json.dumps(asdict(config), default=str)),
        "spacing_mm": net.spacing,
        "folds": [asdict(f) for f in done],
        "mean": mean,
        "pooled": pooled,
        "left_out": [{"path": p, "reason": r} for p, r in rejected],
    }
    summary = atomic_write_text(out / "classification.json", json.dumps(doc, indent=1) + "\n")
    return ClassifyResult(table.classes, done, mean, pooled, summary, rejected)
