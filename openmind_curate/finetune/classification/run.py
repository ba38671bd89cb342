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
(`train.trainer`, the `method.Classify` method): an epoch is one pass over
the training images in a fresh order (seeded by the epoch), cut into steps
of ``batch x accumulate`` volumes; the last step of an epoch is filled up
from the start of that epoch's order, so every step has the same size.
Then rank 0 predicts the held-out fold from the saved weights.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from openmind_curate.atomic import atomic_write_bytes, atomic_write_text
from openmind_curate.errors import InputError
from openmind_curate.finetune.classification import folds as F
from openmind_curate.finetune.classification import metrics, volumes
from openmind_curate.finetune.classification.method import BATCH, RESIZE, Classify
from openmind_curate.finetune.classification.table import Table, read_table
from openmind_curate.jobs import JobOptions
from openmind_curate.train import models, nnssl
from openmind_curate.train.loader import rank_slice
from openmind_curate.train.pretrain import world as pretrain_world
from openmind_curate.train.trainer import TrainConfig, train

Echo = Callable[[str], None]
#: Separates the epoch order's seed from every other draw.
ORDER_SALT = 0x4F52  # "OR"


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
    warmup_epochs: int = 20
    batch: int | None = None  # volumes per forward (the micro-batch)
    accumulate: int | None = None  # micro-batches per optimizer step
    lr: float | None = None
    folds: tuple[int | str, ...] = ("all",)
    spacing: str | float = "pretrained"  # "pretrained" | mm
    index: Path | None = None
    volumes: Path | None = None  # default RUN/volumes
    seed: int = 0
    amp: str = "none"
    resume: bool = False
    workers: int | None = None
    progress: bool = True
    device: str = ""
    stop_after: int | None = None  # a fold stops (checkpointed) after this many steps in all


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
    family's loop settings, and the checkpoint to load."""

    architecture: dict[str, Any]
    arch: str
    family: str
    pretrained: nnssl.Pretrained | None
    spacing: float | None


def network_for(config: ClassifyConfig) -> Network:
    """The checkpoint's network (or `config.arch`'s) and the spacing to preprocess at."""
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


@dataclass
class EpochBatches:
    """``batches(step, rank, world)`` for the trainer: epoch e's order is a
    permutation seeded by (seed, e); step k of it takes the next
    `global_batch` images of that order, wrapping around at its end."""

    root: Path
    case_ids: list[str]
    labels: np.ndarray
    global_batch: int
    iters_per_epoch: int
    seed: int

    def positions(self, step: int) -> np.ndarray:
        epoch, k = divmod(step, self.iters_per_epoch)
        n = len(self.case_ids)
        order = np.random.default_rng([self.seed, epoch, ORDER_SALT]).permutation(n)
        return order[(k * self.global_batch + np.arange(self.global_batch)) % n]

    def __call__(self, step: int, rank: int, world: int) -> dict[str, Any]:
        mine = rank_slice(self.global_batch, rank, world)
        pos = self.positions(step)[mine.start : mine.stop]
        image = np.stack([volumes.load(self.root, self.case_ids[p]) for p in pos])
        return {
            "image": torch.from_numpy(image)[:, None],
            "label": torch.as_tensor(self.labels[pos], dtype=torch.long),
            "index": [step * self.global_batch + j for j in mine],
            "case_id": [self.case_ids[p] for p in pos],
        }


def step_sizes(config: ClassifyConfig, family: str, n_train: int, echo: Echo) -> tuple[int, int]:
    """(micro-batch, accumulation): the options, else the paper's for the
    family, cut so that one step is no more than the training images."""
    micro, acc = BATCH.get(family, BATCH["resenc"])
    micro = config.batch or micro
    acc = config.accumulate or acc
    if micro < 1 or acc < 1:
        raise InputError("--batch and --accumulate must be 1 or more")
    if micro > n_train:
        micro = n_train
    if micro * acc > n_train:
        fit = max(1, n_train // micro)
        echo(
            f"a step of {micro} x {acc} volumes is more than the {n_train} training images: "
            f"accumulating {fit} instead"
        )
        acc = fit
    return micro, acc


def classify(config: ClassifyConfig, echo: Echo = print) -> ClassifyResult:
    """Read, preprocess, split, and train and evaluate each chosen fold."""
    rank, world = pretrain_world()
    if rank != 0:  # under torchrun rank 0 speaks for all
        echo = _silent
    out = Path(config.out)
    _refuse_unfinished(out, config.resume)
    table = read_table(config.data, config.label, config.index)
    for note in table.notes:
        echo(note)
    net = network_for(config)
    cases, rejected = _prepared(table, config, net, echo)
    fold_of = F.assign_folds(cases["label"], cases["subject"], config.seed)
    chosen = list(range(F.FOLDS)) if "all" in config.folds else [int(f) for f in config.folds]
    done: list[FoldResult] = []
    for k in chosen:
        result, stopped = _fold(config, net, table.classes, cases, fold_of, k, (rank, world), echo)
        if stopped is not None:
            signum = stopped or None
            return ClassifyResult(table.classes, done, {}, None, None, rejected, signum, False)
        if result is not None:
            done.append(result)
    if rank != 0:
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
    table: Table, config: ClassifyConfig, net: Network, echo: Echo
) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """The cases whose volume is ready; the others named with their reason."""
    root = Path(config.volumes or Path(config.out) / "volumes")
    options = JobOptions(workers=config.workers, progress=config.progress, description="volumes")
    vc = volumes.VolumeConfig(net.spacing, tuple(int(s) for s in config.resize))
    rank, world = pretrain_world()
    key = volumes.batch_key(table.cases, vc)
    if rank == 0:
        status = volumes.prepare_volumes(table.cases, root, vc, options)
        if world > 1:
            volumes.publish(root, key, status)
    else:
        status = volumes.wait_published(table.cases, root, key)
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
    rank_world: tuple[int, int],
    echo: Echo,
) -> tuple[FoldResult | None, int | None]:
    """Train fold `k` and (rank 0) evaluate it. Second: None when the fold is
    complete, else the signal that stopped it (0: `stop_after`)."""
    rank, world = rank_world
    train_cases = cases[fold_of != k].reset_index(drop=True)
    held = cases[fold_of == k].reset_index(drop=True)
    micro, acc = step_sizes(config, net.family, len(train_cases), echo)
    if acc % world:
        raise InputError(f"--accumulate {acc} does not split over {world} GPUs")
    tc = fold_config(config, net, classes, train_cases, k, micro * acc, acc // world)
    root = Path(cases["root"].iloc[0])
    batches = EpochBatches(
        root,
        list(train_cases["case_id"]),
        train_cases["label_index"].to_numpy(),
        tc.global_batch,
        tc.iters_per_epoch,
        config.seed,
    )
    if rank == 0:
        echo(
            f"fold {k}: {len(train_cases)} training images, {len(held)} held out; "
            f"{tc.epochs} epochs of {tc.iters_per_epoch} step(s) of {micro} x {acc}"
        )
    result = train(tc, batches)
    if result.signal is not None or not result.complete:
        return None, result.signal or 0
    if rank != 0:
        return None, None
    scores = evaluate(tc, net, classes, held, root, micro, Path(tc.out))
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
    """The trainer's config for fold `k` (`data` fingerprints its images and labels)."""
    pairs = zip(train_cases["case_id"], train_cases["label_index"], strict=True)
    ids = "".join(f"{c}:{y};" for c, y in pairs)
    return TrainConfig(
        out=str(Path(config.out) / f"fold_{k}"),
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
        iters_per_epoch=math.ceil(len(train_cases) / global_batch),
        lr=config.lr,
        warmup_epochs=min(config.warmup_epochs, config.epochs),
        schedule="cosine",
        amp=config.amp,
        seed=config.seed,
        val_every=0,
        resume=config.resume,
        spacing="native" if net.spacing is None else (net.spacing,) * 3,
        data=f"fold {k} " + hashlib.sha1(ids.encode()).hexdigest()[:16],
        progress=config.progress,
        device=config.device,
        accumulate=accumulate,
        stop_after=config.stop_after,
    )


def load_trained(tc: TrainConfig) -> torch.nn.Module:
    """The classifier with the weights of the fold's last checkpoint, in eval mode."""
    tc = tc.resolved()
    model = tc.method_object().build()
    blob = torch.load(Path(tc.out) / "checkpoint.pt", map_location="cpu", weights_only=False)
    model.load_state_dict(blob["model"])
    return model.eval()


def predict(
    model: torch.nn.Module, root: Path, case_ids: list[str], batch: int, device: str = ""
) -> np.ndarray:
    """Softmax probabilities (n, K) of the volumes, `batch` at a time."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = model.to(dev)
    out = []
    with torch.no_grad():
        for start in range(0, len(case_ids), batch):
            ids = case_ids[start : start + batch]
            x = torch.from_numpy(np.stack([volumes.load(root, c) for c in ids]))[:, None]
            out.append(torch.softmax(model(x.to(dev)).float(), dim=1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0))


def evaluate(
    tc: TrainConfig,
    net: Network,
    classes: list[str],
    held: pd.DataFrame,
    root: Path,
    batch: int,
    fold_dir: Path,
) -> dict[str, Any]:
    """Predict the held-out images; write the predictions, metrics,
    confusion matrix and the classifier."""
    model = load_trained(tc)
    probs = predict(model, root, list(held["case_id"]), batch, tc.device)
    truth = held["label_index"].to_numpy()
    scores = metrics.scores(truth, probs, classes)
    table = held[["case_id", "path", "subject", "label"]].assign(
        predicted=[classes[i] for i in probs.argmax(axis=1)],
        **{f"prob_{c}": probs[:, i] for i, c in enumerate(classes)},
    )
    atomic_write_text(fold_dir / "predictions.csv", table.to_csv(index=False))
    atomic_write_text(fold_dir / "metrics.json", json.dumps(scores, indent=1) + "\n")
    fold = fold_dir.name.removeprefix("fold_")
    metrics.plot_confusion(
        scores["confusion"],
        classes,
        fold_dir / "confusion.png",
        f"fold {fold}: balanced accuracy {scores['balanced_accuracy']:.3f}",
    )
    save_classifier(model, fold_dir / "classifier.pt", tc, net, classes)
    return scores


def save_classifier(
    model: torch.nn.Module, path: Path, tc: TrainConfig, net: Network, classes: list[str]
) -> Path:
    """The classifier's weights with what rebuilds and feeds it, atomically."""
    buf = io.BytesIO()
    torch.save(
        {
            "format": "openmind-curate-classifier/1",
            "classes": classes,
            "architecture": net.architecture,
            "resize": list(tc.params["resize"]),
            "spacing": None if net.spacing is None else net.spacing,
            "frozen": bool(tc.params["frozen"]),
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        },
        buf,
    )
    return atomic_write_bytes(path, buf.getvalue())


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
        "config": json.loads(json.dumps(asdict(replace(config)), default=str)),
        "spacing_mm": net.spacing,
        "folds": [asdict(f) for f in done],
        "mean": mean,
        "pooled": pooled,
        "left_out": [{"path": p, "reason": r} for p, r in rejected],
    }
    summary = atomic_write_text(out / "classification.json", json.dumps(doc, indent=1) + "\n")
    return ClassifyResult(table.classes, done, mean, pooled, summary, rejected)
