"""`curate finetune`: a whole nnU-Net v2 fine-tuning run in one run folder.

``RUN/`` holds nnU-Net's three folders, so nothing outside it is touched::

    RUN/nnUNet_raw/DatasetNNN_Name/        links to the input (dataset.write_raw)
    RUN/nnUNet_preprocessed/DatasetNNN_Name/   fingerprint, plans, preprocessed cases
    RUN/nnUNet_results/DatasetNNN_Name/<Trainer>__openmindPlans__3d_fullres/fold_K/
        checkpoint_{latest,best,final}.pth, training log, validation/summary.json
    RUN/finetune.json                      the Dice per class and fold, and their mean

`prepare` lays out the raw dataset, plans and preprocesses (with
``--continue`` it reuses the plans and the preprocessed cases). `train` trains and
validates each fold with the schedule's trainer and reads nnU-Net's
``summary.json``. nnU-Net reads ``nnUNet_def_n_proc`` when it is imported, so
`set_processes` runs before the first import.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from openmind_curate import preflight
from openmind_curate.errors import InputError
from openmind_curate.finetune import dataset, plans, schedules
from openmind_curate.train import models
from openmind_curate.train.nnssl import Pretrained, architecture, read_pretrained

Echo = Callable[[str], None]
FOLDS = 5
DATASET_ID = 501  # inside RUN/ only; an input named DatasetNNN_Name keeps its own
#: The paper's defaults (appendix C.1): pre-trained encoders at lr 1e-3, from scratch 1e-2.
LR_PRETRAINED, LR_SCRATCH = 1e-3, 1e-2
#: Primus-M: the paper's fine-tuning lr 3e-5 (Table 8, Warm-Up); from scratch the
#: authors' PretrainedTrainer_Primus without weights, 3e-4.
LR_PRIMUS_PRETRAINED, LR_PRIMUS_SCRATCH = 3e-5, 3e-4
#: The best schedule with pre-trained weights: Sawtooth for the CNN (Table 4),
#: Warm-Up for the transformer (Table 8); nnU-Net's PolyLR from scratch.
BEST_SCHEDULE = {"resenc": "sawtooth", "primus": "warmup"}
#: The optimizer of each family (`finetune.trainers`): nnU-Net's SGD for the CNN
#: (wd 3e-5, clip 12); the fork's PretrainedTrainer_Primus for the transformer
#: (AdamW, wd 5e-2, clip 1).
FAMILY_OPTIMIZER = {"resenc": ("sgd", 3e-5, 12.0), "primus": ("adamw", 5e-2, 1.0)}
#: The patch without a checkpoint to take it from: the paper's 160^3.
SCRATCH_PATCH = {
    "resenc-l": (160, 160, 160),
    "tiny": (32, 32, 32),
    "primus-m": (160, 160, 160),
    "tiny-primus": (32, 32, 32),
}
#: The trainer class of each schedule (`finetune.trainers`), by name: nnU-Net
#: names a run's folder after it.
SCHEDULE_TRAINER_NAMES = {
    "default": "DefaultTrainer",
    "frozen": "FrozenTrainer",
    "warmup": "WarmUpTrainer",
    "valley": "ValleyTrainer",
    "sawtooth": "SawtoothTrainer",
}


@dataclass(frozen=True)
class FinetuneConfig:
    """A fine-tuning run (the CLI's options)."""

    data: Path
    out: Path
    pretrained: Path | None = None
    scratch: bool = False  # the checkpoint's network, not its weights
    arch: str = "resenc-l"  # from scratch without --pretrained
    schedule: str | None = None  # None: BEST_SCHEDULE with weights, default without
    epochs: int = 150
    stage_len: int | None = None
    lr: float | None = None
    folds: tuple[int | str, ...] = (0,)
    spacing: str | float = "pretrained"
    patch: tuple[int, int, int] | None = None
    batch: int = 2
    iters_per_epoch: int = 250
    val_iters_per_epoch: int | None = None  # None: iters_per_epoch / 5 (nnU-Net: 250 / 50)
    save_every: int = 50
    reference_param_groups: bool = False
    test_time_mirroring: bool = True
    resume: bool = False  # nnU-Net's --c
    device: str | None = None  # cuda when available
    gpus: int = 1  # > 1: nnU-Net's DDP, one process per GPU (NCCL; unverified here)
    family: str | None = None  # the checkpoint's ("resenc" | "primus"); None: --arch's

    @property
    def loads_weights(self) -> bool:
        return self.pretrained is not None and not self.scratch

    @property
    def network_family(self) -> str:
        return self.family or models.family(self.arch)

    @property
    def schedule_name(self) -> str:
        if self.schedule:
            return self.schedule
        return BEST_SCHEDULE[self.network_family] if self.loads_weights else "default"

    @property
    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        if self.network_family == "primus":
            return LR_PRIMUS_PRETRAINED if self.loads_weights else LR_PRIMUS_SCRATCH
        return LR_PRETRAINED if self.loads_weights else LR_SCRATCH


def with_checkpoint(config: FinetuneConfig, pretrained: Pretrained | None) -> FinetuneConfig:
    """`config` with the family of its checkpoint (which picks the defaults)."""
    return replace(config, family=pretrained.family) if pretrained is not None else config


@dataclass
class Prepared:
    """A dataset planned and preprocessed for one network."""

    run: Path
    name: str  # DatasetNNN_Name
    plans: dict[str, Any]
    dataset_json: dict[str, Any]
    cases: list[str]
    pretrained: Pretrained | None


@dataclass
class FoldResult:
    fold: int | str
    dice: dict[str, float | None]  # per foreground class
    mean: float | None
    folder: Path


@dataclass
class FinetuneResult:
    folds: list[FoldResult]
    dice: dict[str, float | None]  # per class, mean over folds
    mean: float | None
    summary: Path


def set_processes(processes: int | None = None) -> None:
    """nnU-Net's process count for preprocessing and export, set before nnU-Net
    is first imported (it reads it then); the user's setting wins."""
    cpus = os.cpu_count() or 1
    os.environ.setdefault("nnUNet_def_n_proc", str(processes or min(cpus, 8)))


def _augmentation_workers(config: FinetuneConfig) -> int | None:
    """None (nnU-Net's own choice) on a GPU; 0 (augment in the main process)
    on a CPU, where worker processes would only compete with training."""
    import torch

    on_gpu = (config.device or ("cuda" if torch.cuda.is_available() else "cpu")) != "cpu"
    return None if on_gpu else 0


def _log(run: Path) -> Path:
    return Path(run) / "nnunet.log"


@contextmanager
def quiet(run: Path) -> Iterator[None]:
    """nnU-Net's own prints (plans, devices, warnings of its predictor) into
    RUN/nnunet.log; our progress lines stay on the console."""
    from contextlib import redirect_stdout

    with open(_log(run), "a") as fh, redirect_stdout(fh):
        yield


@contextmanager
def nnunet_env(run: Path, augmentation_workers: int | None = None) -> Iterator[None]:
    """nnU-Net's folder variables pointing into `run`, and with
    `augmentation_workers` its ``nnUNet_n_proc_DA`` (all restored after; the
    user's own ``nnUNet_n_proc_DA`` wins)."""
    names = {
        "nnUNet_raw": run / "nnUNet_raw",
        "nnUNet_preprocessed": run / "nnUNet_preprocessed",
        "nnUNet_results": run / "nnUNet_results",
    }
    if augmentation_workers is not None:
        names["nnUNet_n_proc_DA"] = os.environ.get("nnUNet_n_proc_DA", augmentation_workers)
    old = {k: os.environ.get(k) for k in names}
    os.environ.update({k: str(v) for k, v in names.items()})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@dataclass(frozen=True)
class Checked:
    """What `check` read: the checkpoint, the labelled cases and the network."""

    pretrained: Pretrained | None
    source: dataset.SegSource
    network: plans.Network


def check(config: FinetuneConfig) -> Checked:
    """Everything that can be checked before anything is written; raises InputError."""
    pretrained = read_pretrained(config.pretrained) if config.pretrained is not None else None
    config = with_checkpoint(config, pretrained)
    stage_len = config.stage_len or schedules.stage_length(config.epochs)
    schedules.check(config.schedule_name, config.epochs, stage_len)
    for name, value in (("--batch", config.batch), ("--iters-per-epoch", config.iters_per_epoch)):
        if value < 1:
            raise InputError(f"{name} must be at least 1, not {value}")
    if config.gpus < 1:
        raise InputError(f"--gpus must be at least 1, not {config.gpus}")
    if config.scratch and config.pretrained is None:
        raise InputError("--scratch needs --pretrained (whose network it trains from scratch)")
    source = dataset.read_source(config.data)
    patch = config.patch or (None if pretrained else SCRATCH_PATCH.get(config.arch))
    network = plans.network_of(pretrained, architecture(config.arch), patch)
    splits(sorted(c.case_id for c in source.cases), config.folds)
    return Checked(pretrained, source, network)


def prepare(config: FinetuneConfig, checked: Checked, echo: Echo) -> Prepared:
    """The raw dataset in RUN/, planned for the network and preprocessed."""
    source = checked.source
    name = dataset.dataset_folder_name(Path(config.data), DATASET_ID)
    run = Path(config.out)
    folder = run / "nnUNet_preprocessed" / name
    with nnunet_env(run):
        raw = dataset.write_raw(source, run / "nnUNet_raw" / name)
        dataset_json = json.loads((raw / "dataset.json").read_text())
        echo(f"{len(source.cases)} labelled cases, classes {_classes(source.labels)}: {raw}")
        existing = folder / f"{plans.PLANS_NAME}.json"
        if existing.exists() and config.resume:
            planned = json.loads(existing.read_text())
        else:
            echo(f"nnU-Net: fingerprint, plans for the network, preprocessing (log: {_log(run)})")
            with quiet(run):
                planned = plans.plan_and_preprocess(
                    _dataset_id(name),
                    folder.parent,
                    checked.network,
                    config.spacing,
                    config.batch,
                    checked.pretrained,
                    dataset_json,
                    int(os.environ.get("nnUNet_def_n_proc", "1")),
                    check_integrity=source.kind != "synth",
                )
    case_ids = sorted(c.case_id for c in source.cases)
    split = splits(case_ids, config.folds)
    if split is not None:
        (folder / "splits_final.json").write_text(json.dumps(split, indent=2))
    return Prepared(run, name, planned, dataset_json, case_ids, checked.pretrained)


def _classes(labels: dict[int, str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(labels.items()))


def _dataset_id(name: str) -> int:
    return int(name[len("Dataset") : len("Dataset") + 3])


def splits(case_ids: list[str], folds: tuple[int | str, ...]) -> list[dict] | None:
    """nnU-Net's own 5-fold split (None) with 5 cases or more; with fewer, one
    fold per case (leave one out), for ``splits_final.json``. Refuses folds
    the cases cannot make."""
    numbered = [f for f in folds if f != "all"]
    n = len(case_ids)
    if not numbered or n >= FOLDS:
        return None
    if n < 2:
        raise InputError(f"{n} labelled case: cross-validation needs 2; use --fold all")
    too_high = [f for f in numbered if int(f) >= n]
    if too_high:
        raise InputError(
            f"--fold {too_high[0]}: {n} labelled cases make {n} folds (0..{n - 1}); "
            "nnU-Net's 5 folds need 5 cases"
        )
    return [{"train": [c for c in case_ids if c != v], "val": [v]} for v in case_ids]


def settings_for(config: FinetuneConfig, pretrained: Pretrained | None):
    """The trainer's `Settings` for `config` (defaults by the checkpoint's family)."""
    from openmind_curate.finetune.trainers import Settings

    config = with_checkpoint(config, pretrained)
    optimizer, weight_decay, grad_clip = FAMILY_OPTIMIZER[config.network_family]
    return Settings(
        optimizer=optimizer,
        weight_decay=weight_decay,
        grad_clip=grad_clip,
        schedule=config.schedule_name,
        epochs=config.epochs,
        stage_len=config.stage_len,
        lr=config.learning_rate,
        iters_per_epoch=config.iters_per_epoch,
        val_iters_per_epoch=config.val_iters_per_epoch or max(1, config.iters_per_epoch // 5),
        save_every=config.save_every,
        pretrained=str(pretrained.path.resolve()) if pretrained and config.loads_weights else None,
        reference_param_groups=config.reference_param_groups,
        test_time_mirroring=config.test_time_mirroring,
    )


def make_trainer(prepared: Prepared, settings, fold: int | str, device: str | None = None):
    """The schedule's nnU-Net trainer for `fold` (nnU-Net's variables must be set)."""
    import torch

    from openmind_curate.finetune.trainers import SCHEDULE_TRAINERS

    cls = SCHEDULE_TRAINERS[settings.schedule]
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    with quiet(prepared.run):
        return cls(
            plans={**settings.to_plans(prepared.plans), "continue_training": False},
            configuration=plans.CONFIGURATION,
            fold=fold,
            dataset_json=prepared.dataset_json,
            device=dev,
        )


def train(
    config: FinetuneConfig, prepared: Prepared, echo: Echo, results: Path | None = None
) -> FinetuneResult:
    """Train and validate every fold of `config` with nnU-Net; results under
    `results` (default RUN/nnUNet_results)."""
    settings = settings_for(config, prepared.pretrained)
    folds = []
    with nnunet_env(prepared.run, augmentation_workers=_augmentation_workers(config)):
        if results is not None:
            os.environ["nnUNet_results"] = str(results)
        for fold in config.folds:
            if config.gpus > 1:
                folds.append(_train_fold_ddp(config, prepared, settings, fold, echo))
            else:
                folds.append(_train_fold(config, prepared, settings, fold, echo))
    return _summarise(folds, results or prepared.run / "nnUNet_results", prepared)


def _train_fold(config, prepared: Prepared, settings, fold, echo: Echo) -> FoldResult:
    trainer = make_trainer(prepared, settings, fold, config.device)
    trainer.echo = echo
    echo(
        f"fold {fold}: {type(trainer).__name__}, {settings.epochs} epochs x "
        f"{settings.iters_per_epoch} iterations, {settings.optimizer} at lr {settings.lr:g}, "
        f"{'pre-trained ' + prepared.pretrained.arch if settings.pretrained else 'from scratch'}"
    )
    out = Path(trainer.output_folder)
    if config.resume:
        _continue(trainer, out, echo)
    trainer.run_training()
    with quiet(prepared.run):
        trainer.perform_actual_validation(False)
    names = {str(v): k for k, v in prepared.dataset_json["labels"].items()}
    return _fold_result(fold, out, names)


def _train_fold_ddp(config, prepared: Prepared, settings, fold, echo: Echo) -> FoldResult:
    """nnU-Net's multi-GPU training: one process per GPU, NCCL, as
    ``nnUNetv2_train -num_gpus`` starts it. Not verified: no GPU in CI."""
    import torch
    import torch.multiprocessing as mp
    from nnunetv2.run.run_training import find_free_network_port

    if torch.cuda.device_count() < config.gpus:
        raise InputError(f"--gpus {config.gpus}: {torch.cuda.device_count()} CUDA device(s) here")
    os.environ.setdefault("MASTER_ADDR", "localhost")
    os.environ["MASTER_PORT"] = str(find_free_network_port())
    echo(f"fold {fold}: nnU-Net DDP on {config.gpus} GPUs")
    args = (config.gpus, config, prepared, settings, fold)
    mp.spawn(_ddp_rank, args=args, nprocs=config.gpus, join=True)
    names = {str(v): k for k, v in prepared.dataset_json["labels"].items()}
    trainer = (
        f"{SCHEDULE_TRAINER_NAMES[settings.schedule]}__{plans.PLANS_NAME}__{plans.CONFIGURATION}"
    )
    out = Path(os.environ["nnUNet_results"]) / prepared.name / trainer / f"fold_{fold}"
    return _fold_result(fold, out, names)


def _ddp_rank(rank: int, world: int, config, prepared: Prepared, settings, fold) -> None:
    import torch
    import torch.distributed as dist

    dist.init_process_group("nccl", rank=rank, world_size=world)
    torch.cuda.set_device(torch.device("cuda", rank))
    trainer = make_trainer(prepared, settings, fold, "cuda")
    if rank == 0:
        trainer.echo = print
    if config.resume:
        _continue(trainer, Path(trainer.output_folder), print if rank == 0 else _silent)
    trainer.run_training()
    trainer.perform_actual_validation(False)
    dist.destroy_process_group()


def _silent(_: str) -> None:
    pass


def _continue(trainer, out: Path, echo: Echo) -> None:
    """nnU-Net's --c: the final, else the latest, else the best checkpoint."""
    for name in ("checkpoint_final.pth", "checkpoint_latest.pth", "checkpoint_best.pth"):
        if (out / name).exists():
            trainer.load_checkpoint(str(out / name))
            echo(f"continuing from {out / name} at epoch {trainer.current_epoch}")
            return
    echo(f"no checkpoint in {out}: starting afresh")


def _fold_result(fold: int | str, out: Path, names: dict[str, str]) -> FoldResult:
    """The fold's Dice per class (by name) from nnU-Net's summary.json."""
    summary = json.loads((out / "validation" / "summary.json").read_text())
    ordered = sorted(summary["mean"].items(), key=lambda kv: int(kv[0]))
    dice = {names.get(label, label): _number(values.get("Dice")) for label, values in ordered}
    return FoldResult(fold, dice, _number(summary["foreground_mean"].get("Dice")), out)


def _number(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return None if v != v else v  # NaN: a class absent from both prediction and truth


def _summarise(folds: list[FoldResult], results: Path, prepared: Prepared) -> FinetuneResult:
    labels = list(dict.fromkeys(k for f in folds for k in f.dice))
    dice = {k: _mean([f.dice.get(k) for f in folds]) for k in labels}
    mean = _mean([f.mean for f in folds])
    doc = {
        "folds": {
            str(f.fold): {
                "dice": f.dice,
                "mean": f.mean,
                "folder": str(f.folder),
            }
            for f in folds
        },
        "dice": dice,
        "mean": mean,
    }
    from openmind_curate.atomic import atomic_write_text

    where = prepared.run if results == prepared.run / "nnUNet_results" else results
    path = atomic_write_text(where / "finetune.json", json.dumps(doc, indent=2))
    return FinetuneResult(folds, dice, mean, path)


def _mean(values: list[float | None]) -> float | None:
    got = [v for v in values if v is not None]
    return sum(got) / len(got) if got else None


def finetune(config: FinetuneConfig, echo: Echo) -> FinetuneResult:
    """`check`, `prepare` and `train`: the whole run."""
    set_processes()
    checked = check(config)
    config = with_checkpoint(config, checked.pretrained)
    config = replace(config, out=preflight.output_dir(Path(config.out)))
    prepared = prepare(config, checked, echo)
    return train(config, prepared, echo)
