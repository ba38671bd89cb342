"""`curate report`: the dataset overview, a static HTML page with PNG figures."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from openmind_curate.cli.common import DEFAULT_INDEX, console, plural, user_errors


@user_errors
def report(
    index: Annotated[
        Path, typer.Option("--index", help="Image index (from `curate crawl`).")
    ] = DEFAULT_INDEX,
    iqs: Annotated[
        Path | None,
        typer.Option(
            "--iqs",
            help="IQS table (parquet or CSV with image_id, iqs): replaces the index's iqs column.",
        ),
    ] = None,
    manifest: Annotated[
        Path | None,
        typer.Option(
            "--manifest",
            help="A manifest (parquet or CSV with image_id): marks the images it kept.",
        ),
    ] = None,
    metrics: Annotated[
        Path | None,
        typer.Option(
            "--metrics",
            help="Metrics table of `curate metrics` (default: metrics/metrics.parquet beside "
            "the index folder, as build-manifest uses, when it exists): the flagged images.",
        ),
    ] = None,
    out: Annotated[
        Path,
        typer.Option(
            "--out", "-o", metavar="FOLDER", help="Folder for index.html and its PNG figures."
        ),
    ] = Path("report"),
) -> None:
    """Write a static HTML overview of the index: images per modality, the
    cumulative images over datasets, metadata, the IQS, the top datasets and
    the images the automatic checks flagged."""
    from openmind_curate.report.run import run

    done = run(index, out, iqs=iqs, manifest=manifest, metrics=metrics)
    console.print(
        f"report of {plural(done.images, 'image')} from {plural(done.datasets, 'dataset')} written:"
    )
    print(done.page)  # plain stdout: whole, for a script or a browser


def register(app: typer.Typer) -> None:
    """Add this module's commands to `app`."""
    app.command("report")(report)
