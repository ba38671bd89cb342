"""`curate build-manifest`: the pre-training manifest (index rows that pass the filters)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Literal

import typer

from openmind_curate.cli.common import (
    DEFAULT_INDEX,
    console,
    escape,
    file_path,
    out_option,
    plural,
    renamed,
    say,
    user_errors,
)


def _table(title: str, columns: list[str], rows: list[list[object]]) -> None:
    """Rows as a rich table; cells are data (dataset ids, rules), never markup."""
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for i, name in enumerate(columns):
        numeric = all(isinstance(row[i], int) for row in rows)
        table.add_column(name, justify="right" if numeric else "left", overflow="fold")
    for row in rows:
        table.add_row(*["" if v is None else escape(str(v)) for v in row])
    console.print(table)


Formats = Literal["parquet", "nnssl", "openmind-csv"]


def build_manifest(
    iqs_max: Annotated[
        str | None,
        typer.Option("--iqs-max", help="Keep images with IQS <= this (1 clean ... 5 unusable)."),
    ] = None,
    index: Annotated[
        Path,
        typer.Option(
            "--index",
            help="Image index (from `curate crawl`), or the OpenMind release's "
            "openneuro_metadata.csv.",
        ),
    ] = DEFAULT_INDEX,
    iqs: Annotated[
        Path | None,
        typer.Option(
            "--iqs",
            help="IQS table (image_id, iqs, iqs_image) overriding the "
            "index's scores \\[default: the scores in the index].",
        ),
    ] = None,
    out: Annotated[
        str | None,
        out_option("FILE", "Manifest to write \\[default: manifests/<name of the filters>]."),
    ] = None,
    fmt: Annotated[
        Formats,
        typer.Option("--format", help="parquet, nnssl (pretrain_data.json) or openmind-csv."),
    ] = "parquet",
    keep_unrated: Annotated[
        bool, typer.Option("--keep-unrated", help="Keep images without a score.")
    ] = False,
    use_predicted_iqs: Annotated[
        bool, typer.Option("--use-predicted-iqs", help="Filter on iqs_predicted instead of iqs.")
    ] = False,
    modalities: Annotated[
        str | None,
        typer.Option("--modalities", help="Keep only these modalities, e.g. T1w,T2w,FLAIR."),
    ] = None,
    exclude_modalities: Annotated[
        str | None, typer.Option("--exclude-modalities", help="Drop these modalities.")
    ] = None,
    datasets: Annotated[
        str | None, typer.Option("--datasets", help="Keep only these dataset ids (comma list).")
    ] = None,
    exclude_datasets: Annotated[
        str | None, typer.Option("--exclude-datasets", help="Drop these dataset ids.")
    ] = None,
    require_masks: Annotated[
        bool, typer.Option("--require-masks", help="Keep images with both masks.")
    ] = False,
    header_status: Annotated[
        str,
        typer.Option("--header-status", help="Keep these header statuses (comma list), or 'any'."),
    ] = "ok",
    max_spacing: Annotated[
        float | None,
        typer.Option(
            "--max-spacing", help="Keep images whose largest voxel spacing is <= this (mm)."
        ),
    ] = None,
    keep_4d: Annotated[
        bool,
        typer.Option("--keep-4d", help="Keep 4D series (n_volumes > 1) \\[default: dropped]."),
    ] = False,
    val_fraction: Annotated[
        float, typer.Option("--val-fraction", help="Fraction of subjects for validation.")
    ] = 0.01,
    val_subjects: Annotated[
        int | None,
        typer.Option(
            "--val-subjects", help="Number of validation subjects (instead of --val-fraction)."
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the subject-level split.")] = 0,
    openmind_root: Annotated[
        Path | None,
        typer.Option(
            "--openmind-root",
            help="With an OpenMind CSV: the folder its paths are "
            "relative to \\[default: the CSV's folder (or its OpenMind/)].",
        ),
    ] = None,
    allow_empty: Annotated[
        bool, typer.Option("--allow-empty", help="Write an empty manifest instead of failing.")
    ] = False,
    collection_name: Annotated[
        str, typer.Option("--collection-name", help="nnssl collection_name.")
    ] = "Dataset001_OpenMind",
    metrics: Annotated[
        Path | None,
        typer.Option(
            "--metrics",
            help="Metrics table (from `curate metrics`): drop images it flags as broken "
            "\\[default: <index folder>/../metrics/metrics.parquet, when it exists].",
        ),
    ] = None,
    keep_flagged: Annotated[
        bool,
        typer.Option(
            "--keep-flagged",
            help="Keep images flagged unreadable, nonfinite, all_zero or constant.",
        ),
    ] = False,
    require_metrics: Annotated[
        bool,
        typer.Option(
            "--require-metrics",
            help="Drop images without a current metrics row \\[default: kept, counted].",
        ),
    ] = False,
) -> None:
    """Filter the index into a pre-training manifest with a subject-level train/val split.

    Writes manifests/<filters>.parquet (or --format nnssl / openmind-csv) and a
    JSON sidecar beside it (filters, counts per filter, input checksums,
    version). Images without a score are dropped by --iqs-max unless
    --keep-unrated; 4D series (raw DWI) are dropped unless --keep-4d (DWI
    enters as its 3D FA/MD/T2w maps). Images the metrics table flags
    unreadable, nonfinite, all_zero or constant are dropped unless
    --keep-flagged.
    """
    from openmind_curate.manifest import build as B
    from openmind_curate.manifest.filters import Filters

    filters = Filters.parse(
        iqs_max=iqs_max,
        modalities=modalities,
        exclude_modalities=exclude_modalities,
        datasets=datasets,
        exclude_datasets=exclude_datasets,
        header_status=header_status,
        keep_unrated=keep_unrated,
        use_predicted_iqs=use_predicted_iqs,
        max_spacing=max_spacing,
        require_masks=require_masks,
        keep_4d=keep_4d,
        keep_flagged=keep_flagged,
        require_metrics=require_metrics,
    )
    result = B.build(
        index,
        filters,
        file_path(out) if out is not None else None,
        fmt=fmt,
        val_fraction=val_fraction,
        val_subjects=val_subjects,
        seed=seed,
        iqs_file=iqs,
        openmind_root=openmind_root,
        allow_empty=allow_empty,
        collection_name=collection_name,
        command=["curate", *sys.argv[1:]],
        metrics_file=metrics,
    )
    _summary(result)


def _summary(result) -> None:
    data = result.sidecar_data
    c = data["counts"]
    _table(
        "Filters",
        ["filter", "rule", "before", "dropped", "after"],
        [[s.name, s.rule, s.before, s.dropped, s.after] for s in result.steps],
    )
    iqs_step = next((s for s in result.steps if s.name == "iqs"), None)
    if iqs_step is not None:
        d = iqs_step.detail
        kept = "kept (--keep-unrated)" if not d["unrated_dropped"] else "dropped"
        console.print(
            f"IQS: {plural(d['above_threshold'], 'image')} above the threshold; "
            f"{plural(d['unrated'], 'unrated image')} {kept}"
        )
    _metrics_line(data["metrics_check"])
    rows = [
        [m, v["images"], v["subjects"], v["datasets"], v["val_images"]]
        for m, v in c["per_modality"].items()
    ]
    rows.append(["total", c["images"], c["subjects"], c["datasets"], result.split.val_images])
    _table("Kept per modality", ["modality", "images", "subjects", "datasets", "val images"], rows)
    sp = result.split
    console.print(
        f"kept {plural(c['images'], 'image')} of {c['input_images']}, "
        f"{plural(c['subjects'], 'subject')}, {plural(c['datasets'], 'dataset')}; split: "
        f"{sp.train_subjects} train / {sp.val_subjects} val subjects "
        f"({sp.train_images} / {sp.val_images} images, seed {sp.seed})"
    )
    say(f"sidecar: {result.sidecar}")
    print(result.out)  # plain stdout, last line: a script can capture the path


def _metrics_line(check: dict) -> None:
    """What the metrics check did, in one line (or why it did not run)."""
    if check["metrics"] is None:
        console.print(
            f"[yellow]note[/yellow] no metrics table at {escape(check['looked_for'])}: "
            "no image checked for corruption (run `curate metrics`, or give --metrics)",
            soft_wrap=True,
        )
        return
    codes = ", ".join(f"{k} {v}" for k, v in check["by_problem"].items())
    flagged = plural(check["flagged"], "flagged image") + (f" ({codes})" if codes else "")
    done = (
        "kept (--keep-flagged)" if check["flagged"] and not check["flagged_dropped"] else "dropped"
    )
    unchecked = "dropped (--require-metrics)" if check["unchecked_dropped"] else "kept"
    console.print(
        f"metrics: {flagged} {done}; {plural(check['unchecked'], 'unchecked image')} "
        f"{unchecked} ({check['no_metrics_row']} without a row, {check['stale']} changed since)"
    )


def register(app: typer.Typer) -> None:
    """Add this module's commands to `app`."""
    settings = renamed(modality="modalities", exclude_modality="exclude_modalities")
    app.command("build-manifest", context_settings=settings)(user_errors(build_manifest))
