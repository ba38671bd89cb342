"""`curate preprocess`: a manifest into the training store (blosc2 arrays + store.parquet)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from openmind_curate.cli.common import (
    KeepExisting,
    Quiet,
    Scheduler,
    Workers,
    console,
    job_options,
    plural,
    user_errors,
)
from openmind_curate.preflight import InputError


def preprocess(
    manifest: Annotated[
        Path, typer.Option("--manifest", "-m", help="Manifest (from `curate build-manifest`).")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Store folder to write.")],
    spacing: Annotated[
        str,
        typer.Option("--spacing", help="Isotropic voxel size in mm, or 'native' (no resampling)."),
    ] = "1.0",
    clip: Annotated[
        str | None,
        typer.Option(
            "--clip",
            help="Clip intensities before normalizing (CT-style): LOW,HIGH values "
            "(e.g. -1000,1000) or pLOW,pHIGH percentiles of the anatomy region "
            "(e.g. p0.5,p99.5) \\[default: no clipping].",
        ),
    ] = None,
    workers: Workers = None,
    scheduler: Scheduler = None,
    quiet: Quiet = False,
    keep_existing: KeepExisting = False,
) -> None:
    """Resample, crop and normalize every manifest image into a blosc2 patch store.

    Each image is reoriented to LPS, resampled (linear; masks nearest
    neighbour), cropped to its nonzero region and z-scored over its anatomy
    mask (the nonzero region without one). Unreadable, NaN/inf, empty and
    constant images are rejected with a reason in STORE/store.parquet; the
    batch goes on. A killed run resumes: run the same command again.
    """
    from openmind_curate import preflight
    from openmind_curate.manifest.writers import ManifestError, read_manifest
    from openmind_curate.train import preprocess as P

    try:
        config = P.PreprocessConfig(spacing=P.parse_spacing(spacing), clip=P.parse_clip(clip))
    except ValueError as exc:
        raise InputError(str(exc)) from None
    try:
        frame = read_manifest(manifest, as_frame=True)
    except ManifestError as exc:
        raise InputError(str(exc)) from None
    if frame.empty:
        raise InputError(f"manifest {manifest} has no images")
    out = preflight.output_dir(out)
    options = job_options(workers, scheduler, quiet, "preprocess", out, keep_existing)
    try:
        result = P.preprocess(frame, out, config, options)
    except ValueError as exc:  # a manifest listing an image twice
        raise InputError(str(exc)) from None
    _summary(result)


def _summary(result) -> None:
    counts = result.meta["counts"]
    console.print(result.batch.summary(), soft_wrap=True)
    console.print(
        f"{plural(counts['cases'], 'image')}: {counts['ok']} ok, {counts['rejected']} rejected; "
        f"{counts['without_anon']} without an anonymization mask (trained with none), "
        f"{counts['anatomy_from_nonzero']} without an anatomy mask (nonzero region used)"
    )
    rejected = result.rejected
    for r in rejected.head(20).itertuples():
        console.print(
            f"  rejected {escape(str(r.source))}: {escape(str(r.reason))}", soft_wrap=True
        )
    if len(rejected) > 20:
        console.print(f"  ... and {len(rejected) - 20} more (see store.parquet)")
    print(result.store)  # plain stdout, last line: a script can capture the path


def register(app: typer.Typer) -> None:
    """Add this module's commands to `app`."""
    app.command("preprocess")(user_errors(preprocess))
