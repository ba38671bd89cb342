"""Pre-training from a manifest: the Python API behind `curate train`.

`pretrain` takes a manifest and a `TrainConfig` and does what a run needs
around the trainer: it finds the store (or makes it: preprocessing resumes,
finished cases are kept), refuses a run that cannot work (ResEnc-L without a
GPU, a run folder holding another run's checkpoint, a store without training
cases), completes the config from the store (spacing, normalization and a
fingerprint of the data, which the checkpoint's config hash covers), builds
the patch loader and its fixed validation batches, and trains
(`train.trainer.train`). `preprocess_manifest` is `curate preprocess`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from openmind_curate import preflight
from openmind_curate.errors import InputError

if TYPE_CHECKING:
    import pandas as pd

    from openmind_curate.jobs import JobOptions
    from openmind_curate.train.preprocess import PreprocessConfig, PreprocessResult
    from openmind_curate.train.store import Store
    from openmind_curate.train.trainer import RunResult, TrainConfig

Say = Callable[[str], None]


def default_store(manifest: str | os.PathLike[str]) -> Path:
    """``<manifest folder>/<manifest stem>.store``: where `pretrain` makes the store."""
    manifest = Path(manifest)
    return manifest.with_name(f"{manifest.stem}.store")


def default_out(manifest: str | os.PathLike[str], method: str, arch: str) -> Path:
    """``runs/<manifest stem>-<method>-<arch>``: the default run folder."""
    return Path("runs") / f"{Path(manifest).stem}-{method}-{arch}"


def world() -> tuple[int, int]:
    """(rank, world size) of this process under torchrun; (0, 1) otherwise."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _quiet(text: str) -> None:
    pass


def manifest_images(manifest: str | os.PathLike[str]) -> pd.DataFrame:
    """A manifest file (`curate build-manifest`) as a frame; an empty one is refused."""
    from openmind_curate.manifest.writers import read_manifest

    frame = read_manifest(manifest, as_frame=True)
    if frame.empty:
        raise InputError(f"manifest {manifest} has no images")
    return frame


def preprocess_manifest(
    manifest: str | os.PathLike[str] | pd.DataFrame,
    out: str | os.PathLike[str],
    config: PreprocessConfig | None = None,
    options: JobOptions | None = None,
) -> PreprocessResult:
    """Preprocess every image of a manifest (a file, or the frame of
    `manifest_images`) into the store at `out` (`train.preprocess.preprocess`;
    resumable, finished cases are kept). An empty manifest is refused."""
    import pandas as pd

    from openmind_curate.jobs import JobOptions
    from openmind_curate.train import preprocess as P

    if not isinstance(manifest, pd.DataFrame):
        manifest_images(manifest)  # refused here if empty; the store records the file
    return P.preprocess(
        manifest,
        out,
        config or P.PreprocessConfig(),
        options or JobOptions(description="preprocess"),
    )


def pretrain(
    manifest: str | os.PathLike[str],
    config: TrainConfig,
    *,
    store: str | os.PathLike[str] | None = None,
    loader_workers: int | None = None,
    val_patches: int = 16,
    cuda: bool | None = None,
    say: Say = _quiet,
) -> RunResult:
    """Pre-train on `manifest` (or resume with ``config.resume``) into ``config.out``.

    `store`: a store made by `curate preprocess`; without it the manifest's
    default store (`default_store`) is made or brought up to date first (one
    process only: under torchrun it must exist). ``config.amp == "auto"``
    means bf16 on a GPU, none on a CPU. `loader_workers`: loader processes per
    rank (default min(8, cores)). `val_patches`: fixed validation patches,
    rounded up to whole global batches (0: none; rank 0 validates). `cuda`:
    whether a GPU is there (None: ask torch). `say` receives progress notes.
    The config passed in is not changed; the run's config is saved in the run
    folder (config.json).
    """
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    config = _device_checked(Path(manifest), config.resolved(), cuda)
    config.check()
    if cuda:
        config = fit_contrastive_batch(config, say)
    out = preflight.output_dir(Path(config.out))
    if (out / "checkpoint.pt").exists() and not config.resume:
        raise InputError(
            f"{out} already holds a checkpoint: pass --resume to continue it, "
            "or choose another --out"
        )
    data = open_or_preprocess(Path(manifest), store, say)
    if (data.cases["split"] == "train").sum() == 0:
        raise InputError(f"store {data.path} has no training cases (split 'train', status ok)")
    config = dataclasses.replace(config, out=str(out), **data_fields(data))
    stream, val = _loader(data, config, loader_workers, val_patches, say)
    from openmind_curate.train.trainer import train

    return train(config, stream=stream, val=val)


def _device_checked(manifest: Path, config: TrainConfig, cuda: bool) -> TrainConfig:
    """ResEnc-L and Primus-M need a GPU (a clear message with a CPU command
    instead); "auto" AMP resolved."""
    if config.arch in ("resenc-l", "primus-m") and not cuda:
        from openmind_curate.train.methods.registry import TINY_PARAMS

        tiny = "tiny-primus" if config.arch == "primus-m" else "tiny"
        sets = "".join(
            f" --set {k}={'x'.join(map(str, v)) if isinstance(v, tuple) else v}"
            for k, v in TINY_PARAMS.get(config.method, {}).items()
        )
        raise InputError(
            f"{config.arch} pre-training needs a CUDA GPU, and this machine has none. For a "
            f"CPU run use the tiny network: curate train --manifest {manifest} --method "
            f"{config.method} --arch {tiny} --patch 32 --batch 4{sets} --epochs 2 "
            "--iters-per-epoch 10"
        )
    if config.amp == "auto":
        return dataclasses.replace(config, amp="bf16" if cuda else "none")
    return config


def fit_contrastive_batch(config: TrainConfig, say: Say, free: int | None = None) -> TrainConfig:
    """A contrastive method's global batch, shrunk to what one GPU holds.

    Accumulation cannot stand in for a contrastive batch (the negatives must
    share one loss), so with ``--accumulate auto`` a batch that the memory
    rule (`trainer.fits_per_rank`) says does not fit is reduced to the
    largest that does, and the run says so. Other methods are unchanged.
    """
    from openmind_curate.train.methods import registry
    from openmind_curate.train.trainer import fits_per_rank

    if not registry.method_class(config.method).contrastive or config.accumulate != 0:
        return config
    rank_world = world()[1]
    per_rank = config.global_batch // rank_world
    fit = fits_per_rank(config, per_rank, free)
    if fit >= per_rank:
        return config
    smaller = fit * rank_world
    say(
        f"{config.method}: a global batch of {config.global_batch} does not fit this GPU by "
        f"the memory rule; training with {smaller} (fewer negatives per step). More GPUs "
        "under torchrun keep the full batch."
    )
    return dataclasses.replace(config, global_batch=smaller)


def open_or_preprocess(manifest: Path, store: str | os.PathLike[str] | None, say: Say) -> Store:
    """The store to train on: `store`, or the manifest's default store, which
    is made (or brought up to date: preprocessing resumes) first."""
    from openmind_curate.jobs import JobOptions
    from openmind_curate.train.store import StoreError, open_store

    given = store is not None
    path = Path(store) if given else default_store(manifest)
    if not given and world()[1] == 1:
        say(f"preprocessing {manifest} into {path} (finished cases are kept)")
        result = preprocess_manifest(
            manifest, path, options=JobOptions(progress=True, description="preprocess")
        )
        counts = result.meta["counts"]
        say(f"store: {counts['ok']} images ok, {counts['rejected']} rejected")
    try:
        return open_store(path)
    except StoreError as exc:
        if given:
            raise
        hint = f"; under torchrun run `curate preprocess --manifest {manifest} --out {path}` first"
        raise InputError(f"{exc}{hint}") from None


def data_fields(data: Store) -> dict:
    """The config fields a store decides: its spacing, normalization, and a
    fingerprint of its cases and splits (part of the checkpoint's config hash,
    so resuming on other data is refused)."""
    from openmind_curate.train.checkpoint import config_hash

    meta = data.meta
    spacing = meta.get("spacing", [1.0, 1.0, 1.0])
    norm = meta.get("normalization", "zscore")
    cases = data.cases
    fingerprint = config_hash(
        {
            "cases": sorted(cases["case_id"].astype(str)),
            "splits": sorted(cases["split"].astype(str)),
            "spacing": meta.get("spacing"),
            "normalization": meta.get("normalization"),
            "clipping": meta.get("clipping"),
        }
    )
    return {
        "spacing": spacing if isinstance(spacing, str) else tuple(float(s) for s in spacing),
        "normalization": norm.get("method", "zscore") if isinstance(norm, dict) else str(norm),
        "data": fingerprint,
    }


def _loader(data: Store, config: TrainConfig, workers: int | None, val_patches: int, say: Say):
    """The store's batch stream (`make_loader`) and fixed validation batches."""
    from openmind_curate.train.trainer import PrepareInWorkers

    try:
        from openmind_curate.train import loader as L
    except ImportError as exc:
        raise InputError(f"the patch loader is not available ({exc})") from None
    method = config.method_object()
    lcfg = L.LoaderConfig(
        patch=method.crop(),
        global_batch=config.global_batch,
        seed=config.seed,
        centre=method.centre_crop,
    )
    n_workers = min(8, os.cpu_count() or 1) if workers is None else workers

    def stream(start: int, rank: int, world: int):
        prepare = PrepareInWorkers(method, config.seed, config.anon_aware, rank, world)
        return iter(L.make_loader(data, lcfg, start, rank, world, n_workers, prepare=prepare))

    if val_patches <= 0 or world()[0] != 0:  # only rank 0 validates
        return stream, None
    if not (data.cases["split"] == "val").any():
        say("no validation cases in the store: no validation loss")
        return stream, None
    return stream, L.val_batches(data, lcfg, max(1, -(-val_patches // config.global_batch)))
