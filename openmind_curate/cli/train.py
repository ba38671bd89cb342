"""`curate train`: MAE pre-training of ResEnc-L (or the tiny network) on a store."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from openmind_curate.cli.common import console, user_errors
from openmind_curate.preflight import InputError


def default_store(manifest: Path) -> Path:
    """``<manifest folder>/<manifest stem>.store``."""
    return manifest.with_name(f"{manifest.stem}.store")


def default_out(manifest: Path, method: str, arch: str) -> Path:
    return Path("runs") / f"{manifest.stem}-{method}-{arch}"


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _world() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _say(text: str) -> None:
    if _world()[0] == 0:
        console.print(text, soft_wrap=True)


def _open_or_preprocess(manifest: Path, store: Path | None):
    """The store to train on: `--store`, or the manifest's default store, which
    is made (or brought up to date: `curate preprocess` resumes) first."""
    from openmind_curate.train.store import StoreError, open_store

    given = store is not None
    path = store if given else default_store(manifest)
    if not given and _world()[1] == 1:
        from openmind_curate.jobs import JobOptions
        from openmind_curate.train import preprocess as P

        _say(
            f"preprocessing {escape(str(manifest))} into {escape(str(path))} "
            "(finished cases are kept)"
        )
        try:
            result = P.preprocess(
                manifest,
                path,
                P.PreprocessConfig(),
                JobOptions(progress=True, description="preprocess"),
            )
        except ValueError as exc:
            raise InputError(str(exc)) from None
        counts = result.meta["counts"]
        _say(f"store: {counts['ok']} images ok, {counts['rejected']} rejected")
    try:
        return open_store(path)
    except StoreError as exc:
        hint = (
            ""
            if given
            else (
                f"; under torchrun run `curate preprocess --manifest {manifest} --out {path}` first"
            )
        )
        raise InputError(f"{exc}{hint}") from None


def _fingerprint(store) -> str:
    """What identifies the training data (part of the config hash)."""
    from openmind_curate.train.checkpoint import config_hash

    cases = store.cases
    return config_hash(
        {
            "cases": sorted(cases["case_id"].astype(str)),
            "splits": sorted(cases["split"].astype(str)),
            "spacing": store.meta.get("spacing"),
            "normalization": store.meta.get("normalization"),
            "clipping": store.meta.get("clipping"),
        }
    )


def train_cmd(
    manifest: Annotated[
        Path, typer.Option("--manifest", "-m", help="Manifest (from `curate build-manifest`).")
    ],
    store: Annotated[
        Path | None,
        typer.Option(
            "--store",
            help="Preprocessed store (from `curate preprocess`) \\[default: "
            "<manifest folder>/<manifest stem>.store, preprocessed first].",
        ),
    ] = None,
    method: Annotated[str, typer.Option("--method", help="SSL method (mae).")] = "mae",
    arch: Annotated[str, typer.Option("--arch", help="resenc-l (paper) or tiny (CPU).")] = (
        "resenc-l"
    ),
    patch: Annotated[int, typer.Option("--patch", help="Patch edge in voxels.")] = 160,
    batch: Annotated[int, typer.Option("--batch", help="Global batch (split over ranks).")] = 8,
    epochs: Annotated[int, typer.Option("--epochs")] = 1000,
    iters_per_epoch: Annotated[int, typer.Option("--iters-per-epoch")] = 250,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Run folder \\[default: runs/<manifest>-<method>-<arch>]."
        ),
    ] = None,
    anon_aware: Annotated[
        bool,
        typer.Option("--anon-aware", help="No loss on anonymized (defaced) voxels."),
    ] = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run in --out from its checkpoint.")
    ] = False,
    amp: Annotated[
        str,
        typer.Option(
            "--amp",
            help="none, bf16 or fp16 \\[default: bf16 on a GPU, none on a CPU].",
            show_default=False,
        ),
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
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers", "-j", help="Loader processes per rank \\[default: min(8, cores)]."
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress line.")] = False,
) -> None:
    """MAE pre-training (the paper's recipe by default: ResEnc-L, 160^3 patches,
    global batch 8, 75% of 16^3 blocks masked, SGD Nesterov 0.99, lr 1e-2,
    PolyLR, 1000 x 250 steps). Runs under torchrun for DDP. Writes
    RUN/checkpoint.pt, log.jsonl, loss.png and encoder.pt."""
    from openmind_curate import preflight

    (manifest,) = preflight.input_files([manifest])
    cuda = _cuda()
    if arch == "resenc-l" and not cuda:
        raise InputError(
            "ResEnc-L pre-training needs a CUDA GPU, and this machine has none. For a CPU "
            f"run use the tiny network: curate train --manifest {manifest} --arch tiny "
            "--patch 32 --batch 2 --mask-block 8 --epochs 2 --iters-per-epoch 10"
        )
    if amp == "auto":
        amp = "bf16" if cuda else "none"
    from openmind_curate.train.checkpoint import CheckpointError
    from openmind_curate.train.trainer import TrainConfig, train

    run = out if out is not None else default_out(manifest, method, arch)
    config = TrainConfig(
        out=str(preflight.output_dir(run)),
        arch=arch,
        method=method,
        patch=patch,
        global_batch=batch,
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
        config.check()
    except ValueError as exc:
        raise InputError(str(exc)) from None
    if (Path(config.out) / "checkpoint.pt").exists() and not resume:
        raise InputError(
            f"{config.out} already holds a checkpoint: pass --resume to "
            "continue it, or choose another --out"
        )

    data = _open_or_preprocess(manifest, store)
    train_cases = data.cases[data.cases["split"] == "train"]
    if train_cases.empty:
        raise InputError(f"store {data.path} has no training cases (split 'train', status ok)")
    spacing = data.meta.get("spacing", [1.0, 1.0, 1.0])
    config.spacing = spacing if isinstance(spacing, str) else tuple(float(s) for s in spacing)
    norm = data.meta.get("normalization", "zscore")
    config.normalization = norm.get("method", "zscore") if isinstance(norm, dict) else str(norm)
    config.data = _fingerprint(data)
    stream, val = _loader(data, config, workers, val_patches)

    try:
        result = train(config, stream=stream, val=val)
    except CheckpointError as exc:
        raise InputError(str(exc)) from None
    except FloatingPointError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(1) from None
    state = "done" if result.complete else "stopped"
    loss = "" if result.loss is None else f", loss {result.loss:.4g}"
    _say(
        f"{state}: {result.steps} of {config.total_steps} steps{loss}"
        + (f", validation loss {result.val_loss:.4g}" if result.val_loss is not None else "")
        + f"; run folder {escape(str(result.out))}"
    )
    for name, path in result.files.items():
        _say(f"  {name}: {escape(str(path))}")
    if result.signal is not None:
        _say(
            f"stopped by signal {result.signal} after step {result.steps}; the same command "
            "with --resume continues"
        )
        raise typer.Exit(128 + result.signal)


def _loader(data, config, workers: int | None, val_patches: int):
    """The store's batch stream (`make_loader`) and fixed validation batches."""
    try:
        from openmind_curate.train import loader as L
    except ImportError as exc:
        raise InputError(f"the patch loader is not available ({exc})") from None
    lcfg = L.LoaderConfig(patch=config.patch, global_batch=config.global_batch, seed=config.seed)
    n_workers = min(8, os.cpu_count() or 1) if workers is None else workers

    def stream(start: int, rank: int, world: int):
        return iter(L.make_loader(data, lcfg, start, rank, world, n_workers))

    if val_patches <= 0 or _world()[0] != 0:  # only rank 0 validates
        return stream, None
    if not (data.cases["split"] == "val").any():
        _say("no validation cases in the store: no validation loss")
        return stream, None
    return stream, L.val_batches(data, lcfg, max(1, -(-val_patches // config.global_batch)))


def register(app: typer.Typer) -> None:
    """Add `curate train` to `app`."""
    app.command("train")(user_errors(train_cmd))
