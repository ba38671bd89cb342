"""`curate finetune`: segmentation fine-tuning of a pre-trained encoder (or from scratch)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated, Literal

import typer

from openmind_curate import preflight
from openmind_curate.cli.common import Arch, console, escape, out_option, say, user_errors
from openmind_curate.errors import InputError

_SCHEDULE_HELP = (
    "default (PolyLR), frozen (decoder only), warmup (linear warm-up, then poly), "
    "valley (decoder only with decreasing lr, then whole-network warm-up, then poly), "
    "sawtooth (decoder warm-up, then whole-network warm-up, then poly)."
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
    out: Annotated[Path, out_option("FOLDER", "Run folder.")],
    pretrained: Annotated[
        Path | None,
        typer.Option(
            "--pretrained",
            help="Encoder exported by `curate train` (encoder.pt). "
            "Without it the network trains from scratch.",
        ),
    ] = None,
    schedule: Annotated[Schedule, typer.Option("--schedule", help=_SCHEDULE_HELP)] = "default",
    epochs: Annotated[int, typer.Option("--epochs", help="Epochs.")] = 150,
    arch: Annotated[
        Arch | None,
        typer.Option(
            "--arch",
            help="The encoder's with --pretrained, else resenc-l (needs a GPU).",
        ),
    ] = None,
    patch: Annotated[
        int | None, typer.Option("--patch", help="Patch edge (default: the encoder's).")
    ] = None,
    batch: Annotated[int, typer.Option("--batch", help="Patches per step.")] = 2,
    iters_per_epoch: Annotated[
        int, typer.Option("--iters-per-epoch", help="Steps per epoch (nnU-Net: 250).")
    ] = 250,
    lr: Annotated[
        float | None,
        typer.Option(
            "--lr", help="Peak learning rate (default 1e-3 fine-tuning, 1e-2 from scratch)."
        ),
    ] = None,
    stage_len: Annotated[
        int | None,
        typer.Option(
            "--stage-len",
            help="Epochs per warm-up stage (default: 15 for 150 "
            "epochs, 50 for 1000; see the finetune guide).",
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed (split, patches, init).")] = 0,
    spacing: Annotated[
        str | None,
        typer.Option(
            "--spacing",
            help="Isotropic target spacing in mm (default: the encoder's, 1 mm from scratch).",
        ),
    ] = None,
    val_fraction: Annotated[
        float, typer.Option("--val-fraction", help="Fraction of cases held out (at least 1).")
    ] = 0.2,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No per-epoch lines.")] = False,
) -> None:
    """Fine-tune for segmentation (Dice + CE) with one of the paper's schedules.

    Reports the validation Dice per class and writes RUN/metrics.json,
    RUN/log.jsonl and RUN/model.pt.
    """
    from rich.table import Table

    from openmind_curate.train.finetune import FinetuneConfig
    from openmind_curate.train.finetune import finetune as run_finetune
    from openmind_curate.train.finetune import preflight as check

    config = FinetuneConfig(
        data=data,
        out=out,
        pretrained=pretrained,
        schedule=schedule,
        epochs=epochs,
        arch=arch,
        patch=patch,
        batch=batch,
        iters_per_epoch=iters_per_epoch,
        lr=lr,
        stage_len=stage_len,
        seed=seed,
        spacing=_spacing_mm(spacing),
        val_fraction=val_fraction,
        quiet=quiet,
    )
    source = check(config)
    config = replace(config, out=preflight.output_dir(out))
    out = config.out
    result = run_finetune(config, source=source, echo=say)
    table = Table(title=f"Validation Dice ({len(result.per_case)} case(s))", title_justify="left")
    table.add_column("case")
    names = list(result.dice)
    for name in names:
        table.add_column(escape(name), justify="right")

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    for case, dice in result.per_case.items():
        table.add_row(escape(case), *[fmt(dice[n]) for n in names])
    table.add_row("mean", *[fmt(result.dice[n]) for n in names], style="bold")
    console.print(table)
    say(
        f"mean Dice over classes: {fmt(result.mean_dice)}; wrote {out / 'metrics.json'}, "
        f"{out / 'log.jsonl'} and {out / 'model.pt'}"
    )


def _spacing_mm(text: str | None) -> float | None:
    """--spacing as a size in mm (None: the encoder's); 'native' is preprocess's only."""
    from openmind_curate.train.preprocess import parse_spacing

    if text is None:
        return None
    value = parse_spacing(text)
    if value is None:
        raise InputError(f"--spacing {text}: fine-tuning resamples every case; give a size in mm")
    return value


def register(app: typer.Typer) -> None:
    """Add `finetune` to `app`."""
    app.command("finetune")(finetune)
