"""`curate demo`: every stage on a generated mini corpus."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from openmind_curate import preflight
from openmind_curate.cli.common import (
    Quiet,
    Workers,
    console,
    require_extra,
    say,
    user_errors,
)
from openmind_curate.cli.corpus import crawl, synth
from openmind_curate.cli.manifest import build_manifest
from openmind_curate.cli.preprocess import preprocess
from openmind_curate.cli.process import dwi, masks, metrics
from openmind_curate.cli.ratings import demo_ratings, iqs
from openmind_curate.cli.report import report
from openmind_curate.cli.train import train_cmd

#: The paper's headline filter (Table 6): images kept at IQS <= 2.5.
IQS_MAX = 2.5
#: Steps, in order; `demo --help` and the progress rules name them.
STEPS = 13
#: Validation subjects of the demo's manifest: the default fraction's floor
#: would give half of a 10-subject corpus (two whole datasets).
VAL_SUBJECTS = 2
#: The split's seed: its two validation subjects come from two datasets, with
#: a few images each (the qc dataset's first subject holds all the ladders).
VAL_SEED = 3


@user_errors
def demo(
    out: Annotated[
        Path, typer.Option("--out", "-o", metavar="FOLDER", help="Folder for the demo run.")
    ] = Path("demo_out"),
    workers: Workers = None,
    quiet: Quiet = False,
) -> None:
    """Run every stage on a generated mini corpus, on this machine (3-4 minutes on 2 cores).

    Steps:
     1 synth           a generated BIDS corpus: 4 datasets, and 1 of a poor protocol
     2 crawl           the image index
     3 dwi             FA, MD and T2w maps of every DWI series
     4 masks           anatomy and anonymization masks
     5 metrics         automatic quality metrics
     6 ratings         a rating plan filled by SIMULATED raters, and their agreement
     7 iqs             the paper's Image Quality Score, and one predicted per image
     8 build-manifest  --iqs-max 2.5: the poor dataset is dropped
     9 report          an HTML overview of the index
    10 preprocess      the manifest into a training store (2 mm voxels)
    11 train           a 30-step MAE pre-training of a tiny network
    12 finetune        tissue segmentation, from scratch and pre-trained (Dice)
    13 classify        T1- or T2-weighted, from scratch and pre-trained
                       (five folds, balanced accuracy)

    It ends with what to open next: the report, the manifest and its sidecar,
    the loss curve, and the command that serves the rater app.
    """
    # steps 10-12 need the training stack: refuse now, not after the curation steps
    require_extra("curate demo", "finetune", ("torch", "dynamic_network_architectures", "nnunetv2"))
    out = preflight.output_dir(out)
    index = out / "index" / "images.parquet"
    started = time.perf_counter()
    times: dict[str, float] = {}
    with _step(1, "synth: generated BIDS corpus (4 datasets, and 1 of a poor protocol)", times):
        synth(out=out / "corpus", poor_datasets=1, workers=workers, quiet=quiet)
    with _step(2, "crawl: image index", times):
        crawl([out / "corpus"], out=index, workers=workers, quiet=quiet)
    with _step(3, "dwi: FA, MD and T2w maps", times):
        dwi(None, out=out / "derivatives" / "dwi", index=index, workers=workers, quiet=quiet)
    with _step(4, "masks: anatomy and anonymization masks", times):
        masks(index=index, out=out / "derivatives" / "masks", workers=workers, quiet=quiet)
    with _step(5, "metrics: automatic quality metrics", times):
        metrics(index=index, out=out / "metrics" / "metrics.parquet", workers=workers, quiet=quiet)
    with _step(6, "ratings: assignment plan filled by SIMULATED raters", times):
        demo_ratings(index, out / "corpus" / "truth" / "images.parquet")
    with _step(7, "iqs: Image Quality Score (from the simulated ratings)", times):
        iqs(
            index=index,
            out=out / "iqs" / "iqs.parquet",
            model=True,
            metrics=out / "metrics" / "metrics.parquet",
        )
    manifest = out / "manifests" / f"iqs-le-{IQS_MAX:g}.parquet"
    with _step(8, f"build-manifest --iqs-max {IQS_MAX:g}", times):
        build_manifest(
            iqs_max=f"{IQS_MAX:g}",
            index=index,
            out=manifest,
            val_subjects=VAL_SUBJECTS,
            seed=VAL_SEED,
        )
        _print_filtered(manifest, out / "iqs" / "iqs.parquet")
    with _step(9, "report: dataset overview", times):
        report(index=index, manifest=manifest, out=out / "report")
    with _flush_denormals():
        _demo_training(out, manifest, workers, quiet, times)
    console.rule("[bold green]demo finished")
    spent = ", ".join(f"{name} {s:.0f} s" for name, s in times.items())
    say(f"{_minutes(time.perf_counter() - started)} in all: {spent}.")
    _open_next(out, index, manifest)


@contextmanager
def _step(n: int, title: str, times: dict[str, float]) -> Iterator[None]:
    """A rule naming step `n`, and its wall time under its command's name."""
    console.rule(f"[bold]{n}/{STEPS} {title}")
    start = time.perf_counter()
    yield
    times[title.split(":")[0].split(" ")[0]] = time.perf_counter() - start


@contextmanager
def _flush_denormals() -> Iterator[None]:
    """Tiny networks trained from scratch on a CPU reach denormal floats, which
    x86 CPUs compute many times slower: the demo's fine-tuning from scratch took
    37-73 s for 4 epochs, 15-29 s with denormals flushed to zero (measured
    beside other load). A toy run loses nothing by it. The setting is
    process-wide, so it is restored after."""
    import torch

    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {seconds % 60:.0f} s"


def _print_filtered(manifest: Path, iqs_table: Path) -> None:
    """How many images the IQS filter dropped, and the groups whose score it
    dropped them for (IQS scores a dataset x modality group)."""
    import pandas as pd

    from openmind_curate.quality.threshold import kept_at

    sidecar = json.loads(manifest.with_suffix(".json").read_text())
    step = next(s for s in sidecar["steps"] if s["filter"] == "iqs")
    groups = pd.read_parquet(iqs_table, columns=["group_key", "iqs"]).drop_duplicates()
    above = groups[groups["iqs"].notna() & ~kept_at(groups["iqs"], IQS_MAX)]
    named = ", ".join(f"{row.group_key} (IQS {row.iqs:.2f})" for row in above.itertuples())
    say(
        f"The IQS filter (--iqs-max {IQS_MAX:g}) dropped {step['dropped']} of the "
        f"{step['before']} images that reached it: {named or 'no group scored above it'}."
    )


def _demo_training(
    out: Path, manifest: Path, workers: int | None, quiet: bool, times: dict[str, float]
) -> None:
    """Steps 10-13 at toy sizes: 2 mm voxels, the tiny network, 32^3 patches
    (classification: whole volumes at 16^3)."""
    from openmind_curate.finetune.demo import finetune_demo

    store = out / "train" / "store"
    with _step(10, "preprocess: the manifest into a blosc2 store (2 mm, demo size)", times):
        preprocess(manifest=manifest, out=store, spacing="2.0", workers=workers, quiet=quiet)
    run = out / "train" / "mae-tiny"
    with _step(11, "train: a short MAE pre-training of the tiny network", times):
        train_cmd(
            manifest=manifest,
            store=store,
            arch="tiny",
            patch=32,
            batch=2,
            epochs=3,
            iters_per_epoch=10,
            out=run,
            mask_block=8,
            val_patches=4,
            resume=(run / "checkpoint.pt").exists(),
            loader_workers=0,
            quiet=quiet,
        )
    with _step(12, "finetune: tissue segmentation, from scratch and pre-trained", times):
        result = finetune_demo(
            out / "corpus",
            run / "encoder.pt",
            out / "train" / "finetune",
            echo=(lambda _: None) if quiet else say,
        )
    for name in ("scratch", "pretrained"):
        r = result[name]
        dice = ", ".join(f"{k} {v:.3f}" for k, v in r["dice"].items())
        say(
            f"{name:>10}: mean Dice {r['mean_dice']:.3f} ({dice}); nnU-Net, {r['epochs']} "
            f"epochs, {r['schedule']}, lr {r['lr']:g}"
        )
    _demo_classification(out, run / "encoder.pt", workers, quiet, times)
    say(
        "Toy sizes: a 30-step pre-training of a 79k-parameter network says nothing "
        "about the paper's recipe; the demo shows that every stage runs."
    )


def _demo_classification(
    out: Path, encoder: Path, workers: int | None, quiet: bool, times: dict[str, float]
) -> None:
    """Step 13: T1- or T2-weighted, five folds, from scratch and pre-trained."""
    from openmind_curate.finetune.classification.demo import classification_demo

    with _step(13, "classify: T1- or T2-weighted, from scratch and pre-trained", times):
        results = classification_demo(
            out / "index" / "images.parquet",
            encoder,
            out / "train" / "classify",
            workers=workers,
            echo=(lambda _: None) if quiet else say,
        )
    for name, r in results.items():
        n = sum(f.scores["n"] for f in r.folds)
        say(
            f"{name:>10}: balanced accuracy {r.mean['balanced_accuracy']:.3f}, average "
            f"precision {r.mean['average_precision']:.3f} ({len(r.folds)} held-out folds, "
            f"{n} images, {' vs '.join(r.classes)}; chance 0.5)"
        )


def _open_next(out: Path, index: Path, manifest: Path) -> None:
    """The demo's last lines: what it left behind, and how to rate its images."""
    say("Open next:")
    say(f"  report          {out / 'report' / 'index.html'}")
    say(f"  manifest        {manifest}")
    say(f"  its sidecar     {manifest.with_suffix('.json')} (filters, counts, split)")
    say(f"  loss curve      {out / 'train' / 'mae-tiny' / 'loss.png'}")
    say(f"  rater app       curate rate --index {index}")
    say(
        f"  to rate yourself, first: curate raters add NAME --index {index} "
        f"(prints your sign-in token), then: curate ratings plan --index {index} --rater NAME"
    )


def register(app: typer.Typer) -> None:
    app.command()(demo)
