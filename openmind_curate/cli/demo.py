"""`curate demo`: every stage on a generated mini corpus."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from openmind_curate import preflight
from openmind_curate.cli.common import (
    Quiet,
    Workers,
    console,
    user_errors,
)
from openmind_curate.cli.corpus import crawl, synth
from openmind_curate.cli.manifest import build_manifest
from openmind_curate.cli.preprocess import preprocess
from openmind_curate.cli.process import dwi, masks, metrics
from openmind_curate.cli.ratings import demo_ratings, iqs
from openmind_curate.cli.report import report
from openmind_curate.cli.train import train_cmd


@user_errors
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the demo run.")] = Path(
        "demo_out"
    ),
    workers: Workers = None,
    quiet: Quiet = False,
) -> None:
    """Run every stage that exists on a generated mini corpus, on this machine.

    Today: synth (a generated corpus), crawl (the image index), dwi (FA, MD
    and T2w maps of every DWI series, added to the index), masks (anatomy and
    anonymization masks, paths in the index), metrics (quality table),
    ratings (an assignment plan filled by simulated raters, with agreement),
    iqs (the paper's score, and one predicted per image from the metrics),
    build-manifest --iqs-max 2.5 and report (an HTML overview).
    """
    out = preflight.output_dir(out)
    index = out / "index" / "images.parquet"
    console.rule("[bold]1/12 synth: generated BIDS corpus")
    synth(out / "corpus", workers=workers, quiet=quiet)
    console.rule("[bold]2/12 crawl: image index")
    crawl([out / "corpus"], out=index, workers=workers, quiet=quiet)
    console.rule("[bold]3/12 dwi: FA, MD and T2w maps")
    dwi(None, out=out / "derivatives" / "dwi", index=index, workers=workers, quiet=quiet)
    console.rule("[bold]4/12 masks: anatomy and anonymization masks")
    masks(index=index, out=out / "derivatives" / "masks", workers=workers, quiet=quiet)
    console.rule("[bold]5/12 metrics: automatic quality metrics")
    metrics(index=index, out=out / "metrics" / "metrics.parquet", workers=workers, quiet=quiet)
    console.rule("[bold]6/12 ratings: assignment plan filled by SIMULATED raters")
    demo_ratings(index, out / "corpus" / "truth" / "images.parquet")
    console.rule("[bold]7/12 iqs: Image Quality Score (from the simulated ratings)")
    iqs(
        index=index,
        out=out / "iqs" / "iqs.parquet",
        model=True,
        metrics=out / "metrics" / "metrics.parquet",
    )
    console.rule("[bold]8/12 build-manifest --iqs-max 2.5")
    manifest = out / "manifests" / "iqs-le-2.5.parquet"
    build_manifest(iqs_max="2.5", index=index, out=manifest)
    console.rule("[bold]9/12 report: dataset overview")
    report(index=index, manifest=manifest, out=out / "report")
    _demo_training(out, manifest, workers, quiet)
    console.rule("[bold green]demo finished")


def _demo_training(out: Path, manifest: Path, workers: int | None, quiet: bool) -> None:
    """Steps 10-12 at toy sizes: 2 mm voxels, the tiny network, 32^3 patches."""
    from openmind_curate.train.finetune import finetune_demo

    console.rule("[bold]10/12 preprocess: the manifest into a blosc2 store (2 mm, demo size)")
    store = out / "train" / "store"
    preprocess(manifest=manifest, out=store, spacing="2.0", workers=workers, quiet=quiet)
    console.rule("[bold]11/12 train: a short MAE pre-training of the tiny network")
    run = out / "train" / "mae-tiny"
    resume = (run / "checkpoint.pt").exists()
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
        resume=resume,
        workers=0,
        quiet=quiet,
    )
    console.rule("[bold]12/12 finetune: tissue segmentation, from scratch and pre-trained")
    result = finetune_demo(
        out / "corpus", run / "encoder.pt", out / "train" / "finetune", quiet=quiet
    )
    for name in ("scratch", "pretrained"):
        r = result[name]
        dice = ", ".join(f"{k} {v:.3f}" for k, v in r["dice"].items())
        console.print(
            f"{name:>10}: mean Dice {r['mean_dice']:.3f} ({dice}); {r['epochs']} "
            f"epochs, {r['schedule']}, lr {r['lr']:g}"
        )
    console.print(
        "Toy sizes: a 30-step pre-training of a 79k-parameter network says nothing "
        "about the paper's recipe; the demo shows that every stage runs."
    )


def register(app: typer.Typer) -> None:
    app.command()(demo)
