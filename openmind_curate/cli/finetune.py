"""`curate finetune`: segmentation fine-tuning on nnU-Net v2 (or from scratch)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Literal

import typer

from openmind_curate.cli.common import Arch, console, escape, out_option, say, user_errors
from openmind_curate.errors import InputError

_SCHEDULE_HELP = (
    "default (PolyLR), frozen (decoder only), warmup (linear warm-up, then poly), "
    "valley (decoder at a falling rate, whole-network warm-up, poly), sawtooth (decoder "
    "warm-up, whole-network warm-up, poly). Default: sawtooth with a pre-trained ResEnc-L "
    "(the paper's best for CNNs, Table 4), warmup with a pre-trained Primus (Table 8); "
    "default (nnU-Net's PolyLR) from scratch."
)
Schedule = Literal["default", "frozen", "warmup", "valley", "sawtooth"]


@user_errors
def finetune(
    data: Annotated[
        Path,
        typer.Option(
            "--data",
            help="nnU-Net raw dataset folder (dataset.json, imagesTr, "
            "labelsTr) or a generated corpus (`curate synth`; its tissue labels).",
        ),
    ],
    out: Annotated[Path, out_option("FOLDER", "Run folder (nnU-Net's folders live inside).")],
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
            "--scratch", help="Train the checkpoint's network from scratch (lr 1e-2; Primus 3e-4)."
        ),
    ] = False,
    arch: Annotated[
        Arch, typer.Option("--arch", help="The network without --pretrained.")
    ] = "resenc-l",
    schedule: Annotated[Schedule | None, typer.Option("--schedule", help=_SCHEDULE_HELP)] = None,
    epochs: Annotated[
        int, typer.Option("--epochs", help="Epochs (the paper: 150; Table 5: 1000).")
    ] = 150,
    fold: Annotated[
        str, typer.Option("--fold", help="Cross-validation fold 0..4, several (0,1) or all.")
    ] = "0",
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
    batch: Annotated[int, typer.Option("--batch", help="Patches per step (nnU-Net: 2).")] = 2,
    iters_per_epoch: Annotated[
        int, typer.Option("--iters-per-epoch", help="Steps per epoch (nnU-Net: 250).")
    ] = 250,
    lr: Annotated[
        float | None,
        typer.Option(
            "--lr",
            help="Peak learning rate (default: ResEnc 1e-3 pre-trained, 1e-2 scratch; "
            "Primus 3e-5 pre-trained, 3e-4 scratch, with AdamW).",
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
) -> None:
    """Fine-tune for segmentation with nnU-Net v2 and one of the paper's schedules.

    nnU-Net plans the data for the checkpoint's network (its architecture and
    patch size, 1 mm and z-score unless told otherwise), preprocesses,
    trains, validates by sliding window and writes its summary.json; this
    prints the Dice per class and fold and writes RUN/finetune.json.
    """
    from openmind_curate.cli.common import require_extra

    require_extra(
        "curate finetune", "finetune", ("torch", "dynamic_network_architectures", "nnunetv2")
    )
    from openmind_curate.finetune.run import FinetuneConfig
    from openmind_curate.finetune.run import finetune as run_finetune

    config = FinetuneConfig(
        data=data,
        out=out,
        pretrained=pretrained,
        scratch=scratch,
        arch=arch,
        schedule=schedule,
        epochs=epochs,
        stage_len=stage_len,
        lr=lr,
        folds=parse_folds(fold),
        spacing=parse_spacing(spacing),
        patch=None if patch is None else (patch,) * 3,
        batch=batch,
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
