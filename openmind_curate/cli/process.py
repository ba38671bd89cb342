"""`curate dwi`, `curate masks` and `curate metrics`: per-image derivatives."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from openmind_curate import preflight
from openmind_curate.cli.common import (
    DEFAULT_INDEX,
    KeepExisting,
    Quiet,
    Scheduler,
    Workers,
    console,
    job_options,
    print_frame,
    read_index,
    user_errors,
    writable_index,
)


@user_errors
def dwi(
    files: Annotated[
        list[Path] | None, typer.Argument(help="DWI series (.nii/.nii.gz); or use --index.")
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Derivatives folder.")] = Path(
        "derivatives/dwi"
    ),
    index: Annotated[
        Path | None, typer.Option(help="Process every DWI of this index and add map rows.")
    ] = None,
    denoise: Annotated[str, typer.Option(help="mppca, patch2self or none.")] = "mppca",
    stride: Annotated[int, typer.Option(min=1, max=5, help="MP-PCA patch stride.")] = 2,
    gibbs: Annotated[bool, typer.Option("--gibbs/--no-gibbs")] = True,
    motion: Annotated[bool, typer.Option("--motion/--no-motion")] = True,
    bias: Annotated[bool, typer.Option("--bias/--no-bias")] = True,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON result per input on stdout.")
    ] = False,
    workers: Workers = None,
    scheduler: Scheduler = None,
    quiet: Quiet = False,
    keep_existing: KeepExisting = False,
) -> None:
    """DWI -> denoise, Gibbs, motion, N4, brain mask -> FA, MD and T2w (mean b0) maps."""
    import json

    from openmind_curate.dwi.pipeline import DwiConfig
    from openmind_curate.dwi.run import (
        index_rows,
        jobs_for_files,
        jobs_for_index,
        run_jobs,
        update_index,
    )

    if bool(files) == bool(index):
        console.print("[red]error:[/red] give DWI files or --index INDEX (one of the two)")
        raise typer.Exit(2)
    if denoise not in ("mppca", "patch2self", "none"):
        console.print(
            f"[red]error:[/red] --denoise must be mppca, patch2self or none, not {denoise!r}"
        )
        raise typer.Exit(2)
    config = DwiConfig(
        denoise=None if denoise == "none" else denoise,
        mppca_stride=stride,
        gibbs=gibbs,
        motion=motion,
        bias=bias,
    )
    table = None
    if index is not None:
        table = read_index(index)
        writable_index(index)
        inputs = None
    else:
        inputs = preflight.input_files(files or [])
    out = preflight.output_dir(out)
    options = job_options(workers, scheduler, quiet or as_json, "dwi", out, keep_existing)
    if table is not None:
        jobs = jobs_for_index(table, out, config)
    else:
        jobs = jobs_for_files(inputs or [], out, config)
    batch, lines = run_jobs(jobs, options)
    if as_json:
        for line in lines:
            print(json.dumps(line, default=float))
    if index is not None:
        added = update_index(index, index_rows(jobs, table))
        if not as_json:
            console.print(
                f"{added.added + added.replaced} map rows (FA, MD, T2w) in {index} "
                f"({added.added} new)"
            )
            if added.skipped:
                console.print(
                    f"[yellow]note[/yellow] {added.skipped} map rows not added: "
                    "their source left the index during the run"
                )
    if not as_json:
        console.print(batch.summary())
        for line in lines:
            if line["status"] != "failed" and line.get("warnings"):
                console.print(
                    f"[yellow]note[/yellow] {line['input']}: {'; '.join(line['warnings'])}"
                )
    if batch.failed:
        raise typer.Exit(1)


@user_errors
def masks(
    index: Annotated[Path, typer.Option(help="Image index (from `curate crawl`).")] = DEFAULT_INDEX,
    out: Annotated[Path, typer.Option("--out", "-o", help="Derivatives root for the masks.")] = (
        Path("derivatives/masks")
    ),
    workers: Workers = None,
    scheduler: Scheduler = None,
    quiet: Quiet = False,
    keep_existing: KeepExisting = False,
) -> None:
    """Anatomy and anonymization masks for every readable image; paths go into the index."""
    import pandas as pd

    from openmind_curate.masks.run import jobs_for_index, run_jobs, update_index

    table = read_index(index)
    writable_index(index)
    out = preflight.output_dir(out)
    options = job_options(workers, scheduler, quiet, "masks", out, keep_existing)
    jobs = jobs_for_index(table, out)
    batch, records = run_jobs(jobs, options)
    updated = update_index(index, records)
    if updated.skipped:
        console.print(
            f"[yellow]note[/yellow] {updated.skipped} images changed or left the "
            "index during the run: their masks were not recorded"
        )
    if records:
        df = pd.DataFrame(records)
        kinds = (
            df["anonymization"]
            .fillna("none")
            .where(~df["derived"], "DWI-derived map (brain-masked)")
        )
        counts = kinds.value_counts().rename_axis("anonymization")
        print_frame(counts.reset_index(name="images"), "Anonymization found")
    console.print(
        f"{updated.replaced} index rows now carry mask paths ({index}); masks under {out}"
    )
    console.print(batch.summary())
    if batch.failed:
        raise typer.Exit(1)


@user_errors
def metrics(
    index: Annotated[Path, typer.Option(help="Image index (from `curate crawl`).")] = DEFAULT_INDEX,
    out: Annotated[Path, typer.Option("--out", "-o", help="Metrics table (parquet).")] = Path(
        "metrics.parquet"
    ),
    workers: Workers = None,
    scheduler: Scheduler = None,
    quiet: Quiet = False,
    keep_existing: KeepExisting = False,
) -> None:
    """No-reference quality metrics and corruption checks for every image of the index."""
    from openmind_curate.quality.run import run_metrics

    table = read_index(index)
    out = preflight.output_file(out)
    options = job_options(workers, scheduler, quiet, "metrics", out.parent, keep_existing)
    batch, result = run_metrics(table, out, options)
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
    console.print(f"{len(df)} rows, {len(bad)} flagged corrupted -> {out}")
    console.print(batch.summary())
    if batch.failed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command()(dwi)
    app.command()(masks)
    app.command()(metrics)
