"""`curate dwi`, `curate masks` and `curate metrics`: per-image derivatives."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated, Literal

import typer

from openmind_curate import preflight
from openmind_curate.cli.common import (
    DEFAULT_INDEX,
    Batch,
    IndexPath,
    batch_command,
    console,
    error,
    escape,
    finish_batch,
    out_file,
    out_option,
    print_frame,
    say,
    user_errors,
)
from openmind_curate.index_input import check_writable, read_images

#: Where `curate metrics` writes its table (the demo's layout; `curate iqs --metrics` reads it).
DEFAULT_METRICS = "metrics/metrics.parquet"


@user_errors
@batch_command
def dwi(
    files: Annotated[
        list[Path] | None,
        typer.Argument(
            metavar="FILES...",
            help="DWI series (.nii/.nii.gz); without them, every DWI of --index.",
        ),
    ] = None,
    out: Annotated[Path, out_option("FOLDER", "Derivatives folder.")] = Path("derivatives/dwi"),
    index: Annotated[
        Path,
        typer.Option(
            "--index", help="Without FILES: process every DWI of this index and add map rows."
        ),
    ] = DEFAULT_INDEX,
    denoise: Annotated[
        Literal["mppca", "patch2self", "none"], typer.Option(help="Denoising method.")
    ] = "mppca",
    stride: Annotated[int, typer.Option(min=1, max=5, help="MP-PCA patch stride.")] = 2,
    gibbs: Annotated[bool, typer.Option("--gibbs/--no-gibbs")] = True,
    motion: Annotated[bool, typer.Option("--motion/--no-motion")] = True,
    bias: Annotated[bool, typer.Option("--bias/--no-bias")] = True,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON result per input on stdout.")
    ] = False,
    *,
    batch: Batch,
) -> None:
    """DWI -> denoise, Gibbs, motion, N4, brain mask -> FA, MD and T2w (mean b0) maps."""
    import json

    from openmind_curate.dwi import stage

    config = stage.config_for(denoise, stride, gibbs, motion, bias)
    table = None
    if files and index != DEFAULT_INDEX:
        raise error("give DWI files or --index, not both")
    if files:
        files = preflight.input_files(files)
    else:
        table = read_images(index)
        check_writable(index)
    out = preflight.output_dir(out)
    options = replace(batch, quiet=batch.quiet or as_json).job_options("dwi", out)
    if table is None:
        result = stage.run(out, config, options, files=files)
    else:
        result = stage.run(out, config, options, index=index, frame=table)
    if as_json:
        for line in result.lines:
            print(json.dumps(line, default=float))
    elif result.update is not None:
        added = result.update
        say(f"{added.added + added.replaced} map rows (FA, MD, T2w) in {index} ({added.added} new)")
        if added.skipped:
            console.print(
                f"[yellow]note[/yellow] {added.skipped} map rows not added: "
                "their source left the index during the run"
            )
    if not as_json:
        say(result.batch.summary())
        for line in result.lines:
            if line["status"] != "failed" and line.get("warnings"):
                text = f"{line['input']}: {'; '.join(line['warnings'])}"
                console.print(f"[yellow]note[/yellow] {escape(text)}", soft_wrap=True)
    if result.batch.failed:
        raise typer.Exit(1)


@user_errors
@batch_command
def masks(
    index: IndexPath = DEFAULT_INDEX,
    out: Annotated[Path, out_option("FOLDER", "Derivatives root for the masks.")] = Path(
        "derivatives/masks"
    ),
    *,
    batch: Batch,
) -> None:
    """Anatomy and anonymization masks for every readable image; paths go into the index."""
    import pandas as pd

    from openmind_curate.masks import stage

    table = read_images(index)
    check_writable(index)
    out = preflight.output_dir(out)
    options = batch.job_options("masks", out)
    result = stage.run(index, out, options, frame=table)
    if result.update.skipped:
        console.print(
            f"[yellow]note[/yellow] {result.update.skipped} images changed or left the "
            "index during the run: their masks were not recorded"
        )
    if result.records:
        df = pd.DataFrame(result.records)
        kinds = (
            df["anonymization"]
            .fillna("none")
            .where(~df["derived"], "DWI-derived map (brain-masked)")
        )
        counts = kinds.value_counts().rename_axis("anonymization")
        print_frame(counts.reset_index(name="images"), "Anonymization found")
    say(f"{result.update.replaced} index rows now carry mask paths ({index}); masks under {out}")
    finish_batch(result.batch)


@user_errors
@batch_command
def metrics(
    index: IndexPath = DEFAULT_INDEX,
    out: Annotated[str, out_option("FILE", "Metrics table (parquet).")] = DEFAULT_METRICS,
    *,
    batch: Batch,
) -> None:
    """No-reference quality metrics and corruption checks for every image of the index."""
    from openmind_curate.quality.run import run_metrics

    table = read_images(index)
    path = out_file(out)
    options = batch.job_options("metrics", path.parent)
    run, result = run_metrics(table, path, options)
    df = result.to_pandas()
    bad = df[df["corrupted"]]
    if len(bad):
        shown = bad.assign(problems=bad["problems"].map(", ".join))
        print_frame(shown[["dataset_id", "path", "problems"]], "Corruption checks failed", 20)
    cols = ["snr_dietrich", "cnr_otsu", "efc", "fber", "fwhm_mm", "artifact_fraction", "inu_range"]
    summary = df[cols].describe().loc[["count", "50%", "min", "max"]].round(3).T
    summary["count"] = summary["count"].astype(int)
    print_frame(
        summary.rename(columns={"50%": "median"}).reset_index(names="metric"),
        "Metrics over the index",
    )
    say(f"{len(df)} rows, {len(bad)} flagged corrupted -> {path}")
    finish_batch(run)


def register(app: typer.Typer) -> None:
    """Add `dwi`, `masks` and `metrics` to `app`."""
    app.command()(dwi)
    app.command()(masks)
    app.command()(metrics)
