"""`curate train`: pre-training of ResEnc-L or Primus-M (or a tiny network) by eight methods."""

from __future__ import annotations

from dataclasses import dataclass, fields
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
from openmind_curate.train.methods.registry import METHODS

MethodName = Literal[
    "mae",
    "s3d",
    "simmim",
    "models-genesis",
    "volume-fusion",
    "swinunetr",
    "simclr",
    "voco",
]

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
    method: Annotated[
        MethodName, typer.Option("--method", help="Pre-training method (listed above).")
    ] = "mae",
    arch: Annotated[
        Arch,
        typer.Option(
            "--arch",
            help="resenc-l (the paper's CNN), primus-m (its transformer), or tiny / "
            "tiny-primus (CPU-sized networks of the same classes).",
        ),
    ] = "resenc-l",
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            metavar="NAME=VALUE",
            help="Override one of the method's own parameters (repeatable), e.g. "
            "--set temperature=0.1, or an optimizer setting: momentum, betas, eps, "
            "grad_clip, poly_exponent; a wrong name lists the method's parameters.",
        ),
    ] = None,
    patch: Annotated[
        int | None, typer.Option("--patch", help="Patch edge in voxels \\[default: the method's].")
    ] = None,
    batch: Annotated[
        int | None,
        typer.Option("--batch", help="Global batch, split over ranks \\[default: the method's]."),
    ] = None,
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
    optimizer: Annotated[
        Literal["sgd", "adamw"] | None,
        typer.Option("--optimizer", help="\\[default: sgd on ResEnc, adamw on Primus]."),
    ] = None,
    lr: Annotated[
        float | None,
        typer.Option("--lr", help="Peak learning rate (PolyLR) \\[default: the method's]."),
    ] = None,
    weight_decay: Annotated[
        float | None, typer.Option("--weight-decay", help="\\[default: the method's].")
    ] = None,
    warmup_epochs: Annotated[
        int | None,
        typer.Option(
            "--warmup-epochs", help="Linear warm-up epochs \\[default: 0 on ResEnc, 50 on Primus]."
        ),
    ] = None,
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
        int | None,
        typer.Option(
            "--mask-block", help="MAE: mask block edge (= --set mask_block=N).", hidden=True
        ),
    ] = None,
    mask_ratio: Annotated[
        float | None,
        typer.Option("--mask-ratio", help="MAE: masked share (= --set mask_ratio=R).", hidden=True),
    ] = None,
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
    """Pre-train an encoder on a manifest's images (runs under torchrun for DDP)."""
    require_extra("curate train", "train", TRAIN_MODULES)
    from openmind_curate import preflight
    from openmind_curate.train.pretrain import default_out, pretrain
    from openmind_curate.train.trainer import TrainConfig

    n_micro = _accumulate(accumulate)
    (manifest,) = preflight.input_files([manifest])
    overrides = list(set_ or [])
    overrides += [f"mask_block={mask_block}"] if mask_block is not None else []
    overrides += [f"mask_ratio={mask_ratio}"] if mask_ratio is not None else []
    params, settings = _params(method, overrides)
    config = TrainConfig(
        **settings,
        out=str(out if out is not None else default_out(manifest, method, arch)),
        arch=arch,
        method=method,
        params=params,
        patch=patch,
        global_batch=batch,
        accumulate=n_micro,
        epochs=epochs,
        iters_per_epoch=iters_per_epoch,
        optimizer=optimizer,
        lr=lr,
        weight_decay=weight_decay,
        warmup_epochs=warmup_epochs,
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


@dataclass(frozen=True)
class OptimizerSettings:
    """The optimizer settings `--set` takes besides the method's own
    parameters (names and types; the values default to the method's recipe)."""

    momentum: float = 0.99
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-8
    grad_clip: float = 12.0
    poly_exponent: float = 0.9


OPTIMIZER_SETTINGS = tuple(f.name for f in fields(OptimizerSettings))


def _params(method: str, overrides: list[str]) -> tuple[dict, dict]:
    """--set NAME=VALUE pairs as (the method's parameters, the optimizer
    settings of `OPTIMIZER_SETTINGS`), each checked by name and type."""
    import dataclasses

    from openmind_curate.train.methods.base import parse_params
    from openmind_curate.train.methods.registry import method_class

    def name(item: str) -> str:
        return item.partition("=")[0].strip().replace("-", "_")

    own = [item for item in overrides if name(item) not in OPTIMIZER_SETTINGS]
    optim = [item for item in overrides if name(item) in OPTIMIZER_SETTINGS]
    params: dict = {}
    if own:
        parsed = dataclasses.asdict(parse_params(method_class(method).Params, own, method))
        params = {k: parsed[k] for k in map(name, own)}
    settings: dict = {}
    if optim:
        parsed = dataclasses.asdict(parse_params(OptimizerSettings, optim, "the optimizer"))
        settings = {k: parsed[k] for k in map(name, optim)}
    return params, settings


def _help() -> str:
    """The command's help: what it writes, then one line per method (a
    paragraph Click keeps as written: the lines are not re-wrapped)."""
    intro = (
        "Pre-train an encoder on a manifest's images (runs under torchrun for DDP).\n\n"
        "Each method's defaults are the paper's (appendix D): ResEnc-L at 160^3, global batch "
        "8, SGD Nesterov 0.99, lr 1e-2, PolyLR; Primus-M with AdamW 3e-4 and 50 warm-up "
        "epochs; 1000 x 250 steps. Writes RUN/checkpoint.pt, log.jsonl, loss.png, encoder.pt "
        "and nnssl_checkpoint.pth (nnssl's layout, for the authors' nnU-Net); heads are "
        "never exported."
    )
    width = max(len(name) for name in METHODS)
    rows = [f"  {name:<{width}}  {summary}" for name, (_, summary) in METHODS.items()]
    return intro + "\n\nMethods (--method):\n\n\b\n" + "\n".join(rows)


train_cmd.__doc__ = _help()


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
