"""`curate preprocess`: a manifest into the training store (blosc2 arrays + store.parquet)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from openmind_curate.cli.common import (
    Batch,
    ManifestPath,
    batch_command,
    console,
    out_option,
    plural,
    say,
    user_errors,
)


@user_errors
@batch_command
def preprocess(
    manifest: ManifestPath,
    out: Annotated[Path, out_option("FOLDER", "Store folder to write.")],
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
    *,
    batch: Batch,
) -> None:
    """Resample, crop and normalize every manifest image into a blosc2 patch store.

    Each image is reoriented to LPS, resampled (linear; masks nearest
    neighbour), cropped to its nonzero region and z-scored over its anatomy
    mask (the nonzero region without one). Unreadable, NaN/inf, empty and
    constant images are rejected with a reason in STORE/store.parquet; the
    batch goes on. A killed run resumes: run the same command again.
    """
    from openmind_curate import preflight
    from openmind_curate.train import preprocess as P
    from openmind_curate.train.pretrain import manifest_images, preprocess_manifest

    config = P.PreprocessConfig(spacing=P.parse_spacing(spacing), clip=P.parse_clip(clip))
    frame = manifest_images(manifest)
    out = preflight.output_dir(out)
    options = batch.job_options("preprocess", out)
    _summary(preprocess_manifest(frame, out, config, options))


def _summary(result) -> None:
    counts = result.meta["counts"]
    say(result.batch.summary())
    console.print(
        f"{plural(counts['cases'], 'image')}: {counts['ok']} ok, {counts['rejected']} rejected; "
        f"{counts['without_anon']} without an anonymization mask (trained with none), "
        f"{counts['anatomy_from_nonzero']} without an anatomy mask (nonzero region used)"
    )
    rejected = result.rejected
    for r in rejected.head(20).itertuples():
        say(f"  rejected {r.source}: {r.reason}")
    if len(rejected) > 20:
        console.print(f"  ... and {len(rejected) - 20} more (see store.parquet)")
    print(result.store)  # plain stdout, last line: a script can capture the path


def register(app: typer.Typer) -> None:
    """Add `preprocess` to `app`."""
    app.command("preprocess")(preprocess)
