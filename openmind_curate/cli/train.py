"""`curate train`: MAE pre-training of ResEnc-L (or the tiny network) on a store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from openmind_curate.cli.common import (
    Arch,
    ManifestPath,
    console,
    escape,
    out_option,
    renamed,
    require_extra,
    user_errors,
)
from openmind_curate.errors import InputError

#: What `curate train` imports from the train extra (checked before any work).
TRAIN_MODULES = ("torch", "dynamic_network_architectures")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _say(text: str) -> None:
    """Rank 0 speaks (plain text: paths are never markup)."""
    from openmind_curate.train.pretrain import world

    if world()[0] == 0:
        console.print(escape(text), soft_wrap=True, highlight=False)


@user_errors
def train_cmd(
    manifest: ManifestPath,
    store: Annotated[
        Path | None,
        typer.Option(
            "--store",
            help="Preprocessed store (from `curate preprocess`) \\[default: "
            "<manifest folder>/<manifest stem>.store, preprocessed first].",
        ),
    ] = None,
    method: Annotated[Literal["mae"], typer.Option("--method", help="SSL method.")] = "mae",
    arch: Annotated[
        Arch, typer.Option("--arch", help="resenc-l (the paper's) or tiny (a CPU-sized network).")
    ] = "resenc-l",
    patch: Annotated[int, typer.Option("--patch", help="Patch edge in voxels.")] = 160,
    batch: Annotated[int, typer.Option("--batch", help="Global batch (split over ranks).")] = 8,
    accumulate: Annotated[
        str,
        typer.Option(
            "--accumulate",
            metavar="N|auto",
            help="Micro-batches per optimizer step (gradient accumulation; the gradient is "
            "the un-accumulated one). auto: 1 on a CPU; on a GPU the fewest that fit its "
            "free memory by a conservative, not yet measured rule (docs: Pre-training).",
        ),
    ] = "auto",
    epochs: Annotated[int, typer.Option("--epochs")] = 1000,
    iters_per_epoch: Annotated[int, typer.Option("--iters-per-epoch")] = 250,
    out: Annotated[
        Path | None,
        out_option("FOLDER", "Run folder \\[default: runs/<manifest>-<method>-<arch>]."),
    ] = None,
    anon_aware: Annotated[
        bool,
        typer.Option("--anon-aware", help="No loss on anonymized (defaced) voxels."),
    ] = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run in --out from its checkpoint.")
    ] = False,
    amp: Annotated[
        Literal["auto", "none", "bf16", "fp16"],
        typer.Option("--amp", help="Mixed precision; auto: bf16 on a GPU, none on a CPU."),
    ] = "auto",
    compile_: Annotated[
        bool, typer.Option("--compile", help="torch.compile the network (inductor).")
    ] = False,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    lr: Annotated[float, typer.Option("--lr", help="Initial learning rate (PolyLR).")] = 1e-2,
    val_every: Annotated[
        int, typer.Option("--val-every", help="Validate every N epochs (0: only at the end).")
    ] = 1,
    val_patches: Annotated[
        int,
        typer.Option(
            "--val-patches",
            help="Fixed validation patches (rounded up to whole global batches; 0: none).",
        ),
    ] = 16,
    mask_block: Annotated[
        int, typer.Option("--mask-block", help="MAE mask block edge (8 for 32^3 patches).")
    ] = 16,
    mask_ratio: Annotated[float, typer.Option("--mask-ratio")] = 0.75,
    loader_workers: Annotated[
        int | None,
        typer.Option(
            "--loader-workers",
            min=0,
            help="Data-loader processes per rank \\[default: min(8, cores)].",
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress line.")] = False,
) -> None:
    """MAE pre-training of an encoder on a manifest's images (runs under torchrun for DDP).

    The paper's recipe by default: ResEnc-L, 160^3 patches, global batch 8,
    75% of 16^3 blocks masked, SGD Nesterov 0.99, lr 1e-2, PolyLR, 1000 x 250
    steps. Writes RUN/checkpoint.pt, log.jsonl, loss.png, encoder.pt and
    nnssl_checkpoint.pth (the encoder in nnssl's layout, for the authors' nnU-Net).
    """
    require_extra("curate train", "train", TRAIN_MODULES)
    from openmind_curate import preflight
    from openmind_curate.train.pretrain import default_out, pretrain
    from openmind_curate.train.trainer import TrainConfig

    n_micro = _accumulate(accumulate)
    (manifest,) = preflight.input_files([manifest])
    config = TrainConfig(
        out=str(out if out is not None else default_out(manifest, method, arch)),
        arch=arch,
        method=method,
        patch=patch,
        global_batch=batch,
        accumulate=n_micro,
        epochs=epochs,
        iters_per_epoch=iters_per_epoch,
        lr=lr,
        mask_block=mask_block,
        mask_ratio=mask_ratio,
        anon_aware=anon_aware,
        amp=amp,
        compile="inductor" if compile_ else "",
        seed=seed,
        val_every=val_every,
        resume=resume,
        progress=not quiet,
    )
    try:
        result = pretrain(
            manifest,
            config,
            store=store,
            loader_workers=loader_workers,
            val_patches=val_patches,
            cuda=_cuda(),
            say=_say,
        )
    except FloatingPointError as exc:  # the loss diverged: an outcome of the run, not a bug
        console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(1) from None
    _report(result, config.total_steps)


def _accumulate(value: str) -> int:
    """--accumulate as the trainer takes it: N >= 1, or 0 for auto."""
    if value == "auto":
        return 0
    if not value.isdigit() or int(value) < 1:
        raise InputError(f"--accumulate {value!r}: give a whole number >= 1, or auto")
    return int(value)


def _report(result, total_steps: int) -> None:
    state = "done" if result.complete else "stopped"
    loss = "" if result.loss is None else f", loss {result.loss:.4g}"
    val = "" if result.val_loss is None else f", validation loss {result.val_loss:.4g}"
    _say(f"{state}: {result.steps} of {total_steps} steps{loss}{val}; run folder {result.out}")
    if result.accumulate > 1:
        _say(f"  each step in {result.accumulate} micro-batches (--accumulate)")
    for name, path in result.files.items():
        _say(f"  {name}: {path}")
    if result.signal is not None:
        _say(
            f"stopped by signal {result.signal} after step {result.steps}; the same command "
            "with --resume continues"
        )
        raise typer.Exit(128 + result.signal)


def register(app: typer.Typer) -> None:
    """Add `train` to `app` (``--workers`` and ``-j`` are the old names of ``--loader-workers``)."""
    settings = renamed(workers="loader_workers", j="loader_workers")
    app.command("train", context_settings=settings)(train_cmd)
