"""`curate synth`, `curate fetch`, `curate crawl` and `curate index`: the corpus and its index."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from openmind_curate import index as store
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
    legacy_positional,
    out_file,
    out_option,
    plural,
    print_frame,
    renamed,
    say,
    user_errors,
)


@user_errors
@batch_command(keep_existing=False)
def synth(
    out: Annotated[
        Path | None, out_option("FOLDER", "Folder to write the corpus into \\[required].")
    ] = None,
    datasets: Annotated[
        int, typer.Option("--n-datasets", "-d", min=1, help="How many datasets.")
    ] = 4,
    subjects: Annotated[
        int, typer.Option("--n-subjects", "-s", min=1, help="Subjects per dataset.")
    ] = 2,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    voxel_scale: Annotated[
        float,
        typer.Option(min=0.5, max=4.0, help="Voxel-size multiplier; 1.0 = real resolutions."),
    ] = 1.6,
    poor_datasets: Annotated[
        int,
        typer.Option(
            "--n-poor-datasets",
            min=0,
            help="Also datasets of an old, poor protocol (every image noisy, blurred, ghosted).",
        ),
    ] = 0,
    *,
    batch: Batch,
    legacy_out: Annotated[Path | None, typer.Argument(metavar="OUT", hidden=True)] = None,
) -> None:
    """Generate an OpenNeuro-like collection of BIDS datasets with a truth table."""
    from openmind_curate.synth import SynthConfig, generate

    cfg = SynthConfig(
        n_datasets=datasets,
        n_subjects=subjects,
        seed=seed,
        voxel_scale=voxel_scale,
        n_poor_datasets=poor_datasets,
    )
    out, name = legacy_positional(out, legacy_out, "--out", "OUT")
    out = preflight.output_dir(out, name)
    options = batch.job_options("synth", out)
    start = time.perf_counter()
    truth, result = generate(out, cfg, options)
    if truth is None:  # a file failed: the batch summary names it, and exit 1
        finish_batch(result)
    else:
        _print_corpus_summary(truth.to_pandas(), out, time.perf_counter() - start)


def _print_corpus_summary(truth, out: Path, seconds: float) -> None:
    import pandas as pd

    from openmind_curate.synth.summary import summarize

    s = summarize(truth)
    print_frame(s.counts, f"Generated corpus in {out}")
    deg = pd.DataFrame(list(s.degradations.items()), columns=["degradation", "files"])
    print_frame(deg, "Recorded degradations")
    say(
        f"{s.n_files} files ({s.n_images} images), {s.n_subjects} subjects, "
        f"{s.size_mb:.0f} MB, in {seconds:.1f} s. Truth table: {out / 'truth' / 'images.parquet'}"
    )


@user_errors
@batch_command(keep_existing=False)
def crawl(
    roots: Annotated[
        list[Path],
        typer.Argument(metavar="ROOTS...", help="BIDS datasets, or folders holding them."),
    ],
    out: Annotated[str, out_option("FILE", "Index to write.")] = str(DEFAULT_INDEX),
    derivatives: Annotated[
        bool, typer.Option("--derivatives", help="Also index derivative datasets.")
    ] = False,
    datatypes: Annotated[
        str, typer.Option(help="Comma-separated BIDS datatype folders to index.")
    ] = "anat,dwi,pet",
    *,
    batch: Batch,
) -> None:
    """Index BIDS datasets: one row per image, with inherited metadata joined."""
    from openmind_curate.bids.crawl import CrawlOptions, problems_path
    from openmind_curate.bids.crawl import crawl as run_crawl
    from openmind_curate.bids.datatypes import parse_datatypes

    options = CrawlOptions(derivatives, parse_datatypes(datatypes))
    roots = preflight.input_dirs(roots)
    index = out_file(out)
    result = run_crawl(roots, index, options, batch.job_options("crawl"))
    frame = result.index.to_pandas()
    if len(frame):
        _print_index_summary(frame, per_dataset=False)
    problems = result.problems.to_pandas()
    if len(problems):
        kinds = problems["kind"].value_counts().rename_axis("kind").rename("files").reset_index()
        print_frame(kinds, f"Problems: {len(problems)}")
        print_frame(problems[["dataset_id", "path", "message"]], "First problems", limit=10)
        say(f"All problems: {problems_path(index)}")
    rate = result.n_images / result.seconds if result.seconds else 0.0
    say(
        f"{plural(result.n_images, 'image')} from {plural(result.n_datasets, 'dataset')} in "
        f"{result.seconds:.1f} s ({rate:,.0f} images/s); {result.n_unchanged} unchanged since "
        f"the last crawl, {plural(result.n_headers_read, 'header')} read. Index: {index}"
    )
    m = result.merge
    if m.kept or m.cleared or m.removed or m.derived_kept or m.derived_dropped:
        say(
            f"Later stages' results: kept for {m.kept} unchanged images and "
            f"{m.derived_kept} derived rows; dropped for {m.cleared} changed and "
            f"{m.removed} removed images, with {m.derived_dropped} derived rows."
        )
    for label in result.failures:
        console.print(f"[red]failed:[/red] {escape(str(label))}", soft_wrap=True)
    if result.failures:
        raise typer.Exit(1)


@user_errors
def fetch(
    datasets: Annotated[
        list[str], typer.Argument(metavar="DATASETS...", help="OpenNeuro ids, optionally id:tag.")
    ],
    dest: Annotated[Path, typer.Option("--dest", help="Folder to download into.")],
    tag: Annotated[
        str | None, typer.Option(help="Snapshot tag \\[default: the latest snapshot].")
    ] = None,
    datatypes: Annotated[
        str, typer.Option(help="Comma-separated BIDS datatype folders to download.")
    ] = "anat,dwi",
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List files and sizes; download nothing.")
    ] = False,
) -> None:
    """Download OpenNeuro datasets (chosen datatypes plus metadata), resumably."""
    import pandas as pd

    from openmind_curate.bids.datatypes import parse_datatypes
    from openmind_curate.bids.fetch import FetchError, dry_run_table, parse_dataset_arg
    from openmind_curate.bids.fetch import fetch as run_fetch

    if tag and len(datasets) > 1:
        raise error("--tag needs a single dataset; use ID:TAG per dataset")
    chosen = parse_datatypes(datatypes)
    if not dry_run:
        dest = preflight.output_dir(dest, "--dest")
    failed = 0
    for arg in datasets:
        dataset, pinned = parse_dataset_arg(arg, tag)
        try:
            result = run_fetch(dataset, dest, tag=pinned, datatypes=chosen, dry_run=dry_run)
        except FetchError as exc:  # this dataset only: the others are still fetched
            error(str(exc))
            failed += 1
            continue
        plan = result.plan
        table = pd.DataFrame(dry_run_table(plan))
        if len(table):
            table["MB"] = (table.pop("bytes") / 1e6).round(1)
        print_frame(table, f"{dataset} snapshot {plan.snapshot.tag}")
        if dry_run:
            say(f"would download {len(plan.todo)} files, {plan.bytes_todo / 1e6:.1f} MB")
        elif result.complete:
            say(f"{dataset} {plan.snapshot.tag}: complete in {result.dest}")
        else:
            failed += 1
            console.print(
                f"[red]{escape(dataset)}: {len(result.missing_after)} files still missing; "
                "run the same command again to resume[/red]"
            )
    if failed:
        raise typer.Exit(1)


def _print_index_summary(index, per_dataset: bool = True) -> None:
    from openmind_curate.bids.summary import summarize_index

    s = summarize_index(index)
    print_frame(s.per_modality, "Images per modality")
    if per_dataset:
        print_frame(s.per_dataset, "Images per dataset")
    print_frame(s.per_status, "Header status")
    console.print(f"{s.n_images} images, {s.n_datasets} datasets, {s.n_subjects} subjects")


@user_errors
def index_summary(
    index: IndexPath = DEFAULT_INDEX,
    legacy_index: Annotated[Path | None, typer.Argument(metavar="INDEX", hidden=True)] = None,
) -> None:
    """Counts per modality, per dataset and per header status."""
    if legacy_index is not None:
        index, _ = legacy_positional(None, legacy_index, "--index", "INDEX")
    _print_index_summary(store.read_frame(index))


def register(app: typer.Typer) -> None:
    """Add `synth`, `crawl`, `fetch` and the `index` group to `app`."""
    app.command(context_settings=renamed(datasets="n_datasets", subjects="n_subjects"))(synth)
    app.command()(crawl)
    app.command(context_settings=renamed(modalities="datatypes"))(fetch)
    index_app = typer.Typer(help="Inspect an image index.", no_args_is_help=True)
    index_app.command("summary")(index_summary)
    app.add_typer(index_app, name="index")
