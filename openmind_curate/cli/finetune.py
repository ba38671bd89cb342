"""`curate finetune`: segmentation fine-tuning on nnU-Net v2, or classification
(``--task classification``) on the project's own trainer loop; from a
pre-trained checkpoint or from scratch."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Literal

import typer

from openmind_curate.cli.common import (
    Arch,
    Quiet,
    Workers,
    console,
    escape,
    out_option,
    say,
    user_errors,
)
from openmind_curate.errors import InputError
from openmind_curate.index_input import DEFAULT_INDEX

_SCHEDULE_HELP = (
    "default (PolyLR), frozen (decoder only), warmup (linear warm-up, then poly), "
    "valley (decoder at a falling rate, whole-network warm-up, poly), sawtooth (decoder "
    "warm-up, whole-network warm-up, poly). Default: sawtooth with a pre-trained ResEnc-L "
    "(the paper's best for CNNs, Table 4), warmup with a pre-trained Primus (Table 8); "
    "default (nnU-Net's PolyLR) from scratch. Classification: default (a 20-epoch warm-up, "
    "then cosine, the whole network) or frozen (the head alone: linear probing)."
)
Schedule = Literal["default", "frozen", "warmup", "valley", "sawtooth"]
Task = Literal["segmentation", "classification"]
#: Options of one task only, with their defaults: given with the other task, refused.
SEGMENTATION_ONLY = {
    "stage_len": None,
    "reference_param_groups": False,
    "gpus": 1,
    "tta": True,
    "iters_per_epoch": 250,
    "patch": None,
}
CLASSIFICATION_ONLY = {
    "label": None,
    "resize": None,
    "index": DEFAULT_INDEX,
    "accumulate": None,
    "warmup_epochs": None,
    "volumes": None,
    "amp": "auto",
    "workers": None,
    "quiet": False,
}


@user_errors
def finetune(
    data: Annotated[
        Path,
        typer.Option(
            "--data",
            help="Segmentation: nnU-Net raw dataset folder (dataset.json, imagesTr, "
            "labelsTr) or a generated corpus (`curate synth`; its tissue labels). "
            "Classification: a parquet or CSV table of images (a path or an image_id "
            "column) and their labels (--label).",
        ),
    ],
    out: Annotated[Path, out_option("FOLDER", "Run folder (nnU-Net's folders live inside).")],
    task: Annotated[
        Task,
        typer.Option(
            "--task",
            help="segmentation (nnU-Net v2) or classification (whole volumes, the "
            "project's trainer loop, five folds split by subject).",
        ),
    ] = "segmentation",
    pretrained: Annotated[
        Path | None,
        typer.Option(
            "--pretrained",
            help="Pre-trained checkpoint: encoder.pt or nnssl_checkpoint.pth of "
            "`curate train` (ResEnc or Primus), or an nnssl checkpoint (the released "
            "OpenMind weights, ResEncL or PrimusM).",
        ),
    ] = None,
    scratch: Annotated[
        bool,
        typer.Option(
            "--scratch",
            help="Train the checkpoint's network from scratch (segmentation: lr 1e-2, "
            "Primus 3e-4; classification: the same 1e-4).",
        ),
    ] = False,
    arch: Annotated[
        Arch, typer.Option("--arch", help="The network without --pretrained.")
    ] = "resenc-l",
    schedule: Annotated[Schedule | None, typer.Option("--schedule", help=_SCHEDULE_HELP)] = None,
    epochs: Annotated[
        int | None,
        typer.Option(
            "--epochs",
            help="Epochs (segmentation: 150, Table 5: 1000; classification: 200 passes "
            "over the data).",
        ),
    ] = None,
    fold: Annotated[
        str | None,
        typer.Option(
            "--fold",
            help="Cross-validation fold 0..4, several (0,1) or all (default: 0 for "
            "segmentation, all for classification).",
        ),
    ] = None,
    spacing: Annotated[
        str,
        typer.Option(
            "--spacing",
            help="pretrained (the checkpoint's, 1 mm in the paper), planned "
            "(nnU-Net's own) or a size in mm.",
        ),
    ] = "pretrained",
    patch: Annotated[
        int | None,
        typer.Option(
            "--patch",
            help="Patch edge (default: the checkpoint's; 160 from scratch). A multiple of the "
            "network's divisor (Primus: its 8^3 tokens; the positional embedding is "
            "interpolated to the new token grid).",
        ),
    ] = None,
    batch: Annotated[
        int | None,
        typer.Option(
            "--batch",
            help="Segmentation: patches per step (nnU-Net: 2). Classification: volumes "
            "per forward pass (the paper's RSN: ResEnc 4, Primus 2).",
        ),
    ] = None,
    iters_per_epoch: Annotated[
        int, typer.Option("--iters-per-epoch", help="Steps per epoch (nnU-Net: 250).")
    ] = 250,
    lr: Annotated[
        float | None,
        typer.Option(
            "--lr",
            help="Peak learning rate (segmentation: ResEnc 1e-3 pre-trained, 1e-2 scratch; "
            "Primus 3e-5 pre-trained, 3e-4 scratch, with AdamW; classification: 1e-4).",
        ),
    ] = None,
    stage_len: Annotated[
        int | None,
        typer.Option(
            "--stage-len",
            help="Epochs per warm-up stage W (default: 15 for 150 epochs, 50 for 1000).",
        ),
    ] = None,
    reference_param_groups: Annotated[
        bool,
        typer.Option(
            "--reference-param-groups",
            help="Decoder-only stages train what the authors' code trains (the "
            "encoder too), not the paper's frozen encoder.",
        ),
    ] = False,
    resume: Annotated[
        bool, typer.Option("--continue", help="Continue from the run's last checkpoint.")
    ] = False,
    gpus: Annotated[
        int,
        typer.Option(
            "--gpus", help="GPUs: more than 1 runs nnU-Net's DDP (NCCL; not verified in CI)."
        ),
    ] = 1,
    tta: Annotated[
        bool,
        typer.Option("--tta/--no-tta", help="Test-time mirroring in validation (nnU-Net's)."),
    ] = True,
    label: Annotated[
        str | None,
        typer.Option("--label", help="Classification: the table's label column."),
    ] = None,
    resize: Annotated[
        str | None,
        typer.Option(
            "--resize",
            metavar="D,H,W",
            help="Classification: every volume resized to this, after 1 mm and z-score "
            "(default 160,192,192, the paper's brain MRI; multiples of the network's divisor).",
        ),
    ] = None,
    index: Annotated[
        Path,
        typer.Option(
            "--index",
            help="Classification: the index the table's image_id come from (read only when "
            "the table has no path column).",
        ),
    ] = DEFAULT_INDEX,
    accumulate: Annotated[
        str | None,
        typer.Option(
            "--accumulate",
            help="Classification: forward passes per optimizer step (the paper's RSN: "
            "ResEnc 48, Primus 192); a step is --batch x --accumulate volumes.",
        ),
    ] = None,
    warmup_epochs: Annotated[
        int | None,
        typer.Option(
            "--warmup-epochs", help="Classification: linear warm-up before the cosine (20)."
        ),
    ] = None,
    volumes: Annotated[
        Path | None,
        typer.Option(
            "--volumes",
            help="Classification: where the resized volumes are kept (default RUN/volumes); "
            "runs with the same spacing and --resize can share it.",
        ),
    ] = None,
    amp: Annotated[
        Literal["auto", "none", "bf16", "fp16"],
        typer.Option(
            "--amp", help="Classification: mixed precision; auto: bf16 on a GPU, none on a CPU."
        ),
    ] = "auto",
    workers: Workers = None,
    quiet: Quiet = False,
) -> None:
    """Fine-tune a pre-trained encoder for segmentation (nnU-Net v2) or classification.

    Segmentation: nnU-Net plans the data for the checkpoint's network (its
    architecture and patch size, 1 mm and z-score unless told otherwise),
    preprocesses, trains with one of the paper's schedules, validates by
    sliding window and writes its summary.json; this prints the Dice per class
    and fold and writes RUN/finetune.json.

    Classification (--task classification): whole volumes (1 mm, z-score,
    resized), the encoder's pooled features and a linear head, AdamW at 1e-4
    with a 20-epoch warm-up then cosine, five folds stratified by label and
    split by subject; prints balanced accuracy and average precision per fold
    and writes RUN/classification.json. Under torchrun it trains with DDP.
    """
    from openmind_curate.cli.common import require_extra

    require_extra(
        "curate finetune", "finetune", ("torch", "dynamic_network_architectures", "nnunetv2")
    )
    given = dict(locals())
    if task == "classification":
        _refuse_other_task(given, SEGMENTATION_ONLY, "segmentation")
        _classification(given)
        return
    _refuse_other_task(given, CLASSIFICATION_ONLY, "classification")
    from openmind_curate.finetune.run import FinetuneConfig
    from openmind_curate.finetune.run import finetune as run_finetune

    config = FinetuneConfig(
        data=data,
        out=out,
        pretrained=pretrained,
        scratch=scratch,
        arch=arch,
        schedule=schedule,
        epochs=150 if epochs is None else epochs,
        stage_len=stage_len,
        lr=lr,
        folds=parse_folds(fold or "0"),
        spacing=parse_spacing(spacing),
        patch=None if patch is None else (patch,) * 3,
        batch=2 if batch is None else batch,
        iters_per_epoch=iters_per_epoch,
        reference_param_groups=reference_param_groups,
        resume=resume,
        test_time_mirroring=tta,
        gpus=gpus,
    )
    with _signals_interrupt() as caught:
        try:
            result = run_finetune(config, echo=say)
        except KeyboardInterrupt:
            say(
                f"interrupted ({caught[-1] if caught else 'SIGINT'}): nnU-Net's checkpoints "
                f"(checkpoint_latest.pth every 50 epochs, checkpoint_best.pth) are under "
                f"{config.out}; run the same command with --continue to go on"
            )
            raise typer.Exit(143 if caught and caught[-1] == "SIGTERM" else 130) from None
    print_dice(result)
    say(f"wrote {result.summary}; nnU-Net's summary.json per fold under {config.out}")


def _refuse_other_task(given: dict, only: dict, task: str) -> None:
    """Refuse an option of `task` alone given with the other task."""
    for name, default in only.items():
        if given[name] != default:
            flag = "--" + name.replace("_", "-")
            if name == "tta":
                flag = "--no-tta"
            raise InputError(f"{flag} is a {task} option; this run is not --task {task}")


def _classification(o: dict) -> None:
    """`curate finetune --task classification` (options as `finetune` got them)."""
    from openmind_curate.finetune.classification.run import ClassifyConfig, classify

    if not o["label"]:
        raise InputError("--task classification needs --label COLUMN (the table's label column)")
    if o["schedule"] not in (None, "default", "frozen"):
        raise InputError(
            f"--schedule {o['schedule']}: classification has default (a warm-up, then "
            "cosine, the whole network) and frozen (the head alone)"
        )
    spacing = parse_spacing(o["spacing"])
    if spacing == "planned":
        raise InputError("--spacing planned is nnU-Net's plan: give pretrained or a size in mm")
    config = ClassifyConfig(
        data=o["data"],
        label=o["label"],
        out=o["out"],
        resize=parse_resize(o["resize"]) if o["resize"] else (160, 192, 192),
        pretrained=o["pretrained"],
        scratch=o["scratch"],
        arch=o["arch"],
        frozen=o["schedule"] == "frozen",
        epochs=200 if o["epochs"] is None else o["epochs"],
        warmup_epochs=o["warmup_epochs"],
        batch=o["batch"],
        accumulate=_count("--accumulate", o["accumulate"]),
        lr=o["lr"],
        folds=parse_folds(o["fold"] or "all"),
        spacing=spacing,
        index=o["index"],
        volumes=o["volumes"],
        amp=o["amp"],
        resume=o["resume"],
        workers=o["workers"],
        progress=not o["quiet"],
    )
    result = classify(config, echo=say)
    if result.signal is not None:
        say(
            f"stopped by signal {result.signal}; the fold's checkpoint is under {config.out}: "
            "the same command with --continue goes on"
        )
        raise typer.Exit(128 + result.signal)
    if result.summary is not None:
        print_classification(result)
        say(f"wrote {result.summary}; per fold: predictions, metrics and confusion.png")


def _count(flag: str, text: str | None) -> int | None:
    """A whole number >= 1 (None: not given)."""
    if text is None:
        return None
    if not text.isdigit() or int(text) < 1:
        raise InputError(f"{flag} {text!r}: give a whole number >= 1")
    return int(text)


def print_classification(result) -> None:
    """Balanced accuracy and average precision per fold, and their mean."""
    from rich.table import Table

    table = Table(title="Held-out folds", title_justify="left")
    for name in ("fold", "images", "balanced accuracy", "average precision"):
        table.add_column(name, justify="right")

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    for f in result.folds:
        s = f.scores
        table.add_row(
            str(f.fold), str(s["n"]), fmt(s["balanced_accuracy"]), fmt(s["average_precision"])
        )
    if len(result.folds) > 1:
        m = result.mean
        table.add_row("mean", "", fmt(m["balanced_accuracy"]), fmt(m["average_precision"]))
    console.print(table)


def parse_resize(text: str) -> tuple[int, int, int]:
    """``D,H,W`` (or DxHxW): three positive sizes."""
    try:
        size = tuple(int(p) for p in text.replace("x", ",").split(","))
    except ValueError:
        size = ()
    if len(size) != 3 or min(size) < 1:
        raise InputError(f"--resize {text}: give three sizes, D,H,W (such as 160,192,192)")
    return size  # type: ignore[return-value]


@contextmanager
def _signals_interrupt() -> Iterator[list[str]]:
    """SIGTERM raises KeyboardInterrupt, as Ctrl-C does, so nnU-Net's run ends
    the same way (its data-loading workers stop with it); yields the names of
    the signals caught. A process forked meanwhile (nnU-Net's preprocessing
    and loader workers) inherits the handler: there it dies by the signal, as
    it would without us, instead of printing a KeyboardInterrupt traceback
    when nnU-Net closes its pool."""
    caught: list[str] = []
    owner = os.getpid()

    def on_term(signum, frame):  # noqa: ARG001 - signal handler signature
        if os.getpid() != owner:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        caught.append("SIGTERM")
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield caught
    finally:
        signal.signal(signal.SIGTERM, previous)


def print_dice(result) -> None:
    """The Dice per class of each fold, and the mean."""
    from rich.table import Table

    names = list(result.dice)
    table = Table(title="Validation Dice (nnU-Net's summary.json)", title_justify="left")
    table.add_column("fold")
    for name in [*names, "mean"]:
        table.add_column(escape(name), justify="right")

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    for f in result.folds:
        table.add_row(str(f.fold), *[fmt(f.dice.get(n)) for n in names], fmt(f.mean))
    if len(result.folds) > 1:
        table.add_row("mean", *[fmt(result.dice[n]) for n in names], fmt(result.mean))
    console.print(table)


def parse_folds(text: str) -> tuple[int | str, ...]:
    """``0``..``4``, a comma list, or ``all``."""
    if text.strip() == "all":
        return ("all",)
    try:
        folds = tuple(int(p) for p in text.split(","))
    except ValueError:
        raise InputError(f"--fold {text}: give 0..4, a list such as 0,1, or all") from None
    bad = [f for f in folds if not 0 <= f < 5]
    if bad or not folds:
        raise InputError(f"--fold {text}: folds are 0..4 (or all)")
    return folds


def parse_spacing(text: str) -> str | float:
    """``pretrained``, ``planned`` or a positive size in mm."""
    if text in ("pretrained", "planned"):
        return text
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise InputError(f"--spacing {text}: give pretrained, planned or a size in mm")
    return value


def register(app: typer.Typer) -> None:
    """Add `finetune` to `app`."""
    app.command("finetune")(finetune)
