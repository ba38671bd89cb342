"""The `curate` command line. Thin: parse options, call the stage, print a summary."""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from openmind_curate import (
    __version__,
    cli_finetune,
    cli_manifest,
    cli_preprocess,
    cli_ratings,
    cli_report,
    cli_train,
    preflight,
)
from openmind_curate import index as store
from openmind_curate.cli_support import (
    DEFAULT_INDEX,
    KeepExisting,
    Quiet,
    Scheduler,
    Workers,
    console,
    job_options,
    plural,
    print_frame,
    user_errors,
)
from openmind_curate.preflight import InputError

app = typer.Typer(
    name="curate",
    help="Turn public brain MRI into a quality-scored pre-training corpus.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        console.print(f"openmind-curate {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """openmind-curate: crawl, process, score and train on public brain MRI."""
    # The library's notices (a one-time model build, ...) go to stderr.
    log = logging.getLogger("openmind_curate")
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)


@app.command()
@user_errors
def synth(
    out: Annotated[Path, typer.Argument(help="Folder to write the corpus into.")],
    datasets: Annotated[int, typer.Option("--datasets", "-d", min=1)] = 4,
    subjects: Annotated[int, typer.Option("--subjects", "-s", min=1)] = 2,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    voxel_scale: Annotated[
        float,
        typer.Option(min=0.5, max=4.0, help="Voxel-size multiplier; 1.0 = real resolutions."),
    ] = 1.6,
    workers: Workers = None,
    scheduler: Scheduler = None,
    quiet: Quiet = False,
) -> None:
    """Generate an OpenNeuro-like collection of BIDS datasets with a truth table."""
    from openmind_curate.synth import SynthConfig, generate

    cfg = SynthConfig(n_datasets=datasets, n_subjects=subjects, seed=seed, voxel_scale=voxel_scale)
    out = preflight.output_dir(out, "OUT")
    options = job_options(workers, scheduler, quiet, "synth", out)
    start = time.perf_counter()
    try:
        truth, _ = generate(out, cfg, options)
    except (RuntimeError, ValueError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    _print_corpus_summary(truth.to_pandas(), out, time.perf_counter() - start)


def _print_corpus_summary(truth, out: Path, seconds: float) -> None:
    import pandas as pd

    from openmind_curate.synth.summary import summarize

    s = summarize(truth)
    print_frame(s.counts, f"Generated corpus in {out}")
    deg = pd.DataFrame(list(s.degradations.items()), columns=["degradation", "files"])
    print_frame(deg, "Recorded degradations")
    console.print(
        f"{s.n_files} files ({s.n_images} images), {s.n_subjects} subjects, "
        f"{s.size_mb:.0f} MB, in {seconds:.1f} s. Truth table: {out / 'truth' / 'images.parquet'}"
    )


@app.command()
@user_errors
def crawl(
    roots: Annotated[list[Path], typer.Argument(help="BIDS datasets, or folders holding them.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Index to write.")] = DEFAULT_INDEX,
    derivatives: Annotated[
        bool, typer.Option("--derivatives", help="Also index derivative datasets.")
    ] = False,
    datatypes: Annotated[
        str, typer.Option(help="Comma-separated BIDS datatype folders to index.")
    ] = "anat,dwi,pet",
    workers: Workers = None,
    scheduler: Scheduler = None,
    quiet: Quiet = False,
) -> None:
    """Index BIDS datasets: one row per image, with inherited metadata joined."""
    from openmind_curate.bids.crawl import CrawlOptions, problems_path
    from openmind_curate.bids.crawl import crawl as run_crawl

    roots = preflight.input_dirs(roots)
    out = preflight.output_file(out)
    options = CrawlOptions(derivatives, tuple(d.strip() for d in datatypes.split(",") if d))
    result = run_crawl(roots, out, options, job_options(workers, scheduler, quiet, "crawl"))
    index = result.index.to_pandas()
    if len(index):
        _print_index_summary(index, per_dataset=False)
    problems = result.problems.to_pandas()
    if len(problems):
        kinds = problems["kind"].value_counts().rename_axis("kind").rename("files").reset_index()
        print_frame(kinds, f"Problems: {len(problems)}")
        print_frame(problems[["dataset_id", "path", "message"]], "First problems", limit=10)
        console.print(f"All problems: {problems_path(out)}")
    rate = result.n_images / result.seconds if result.seconds else 0.0
    console.print(
        f"{plural(result.n_images, 'image')} from {plural(result.n_datasets, 'dataset')} in "
        f"{result.seconds:.1f} s ({rate:,.0f} images/s); {result.n_unchanged} unchanged since "
        f"the last crawl, {plural(result.n_headers_read, 'header')} read. Index: {out}"
    )
    m = result.merge
    if m.kept or m.cleared or m.removed or m.derived_kept or m.derived_dropped:
        console.print(
            f"Later stages' results: kept for {m.kept} unchanged images and "
            f"{m.derived_kept} derived rows; dropped for {m.cleared} changed and "
            f"{m.removed} removed images, with {m.derived_dropped} derived rows."
        )
    for label in result.failures:
        console.print(f"[red]failed:[/red] {label}")
    if result.failures:
        raise typer.Exit(1)


@app.command()
@user_errors
def fetch(
    datasets: Annotated[list[str], typer.Argument(help="OpenNeuro ids, optionally id:tag.")],
    dest: Annotated[Path, typer.Option("--dest", help="Folder to download into.")],
    tag: Annotated[
        str | None, typer.Option(help="Snapshot tag \\[default: the latest snapshot].")
    ] = None,
    modalities: Annotated[
        str, typer.Option(help="Comma-separated BIDS datatype folders to download.")
    ] = "anat,dwi",
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List files and sizes; download nothing.")
    ] = False,
) -> None:
    """Download OpenNeuro datasets (chosen datatypes plus metadata), resumably."""
    import pandas as pd

    from openmind_curate.bids.fetch import FetchError, dry_run_table, parse_dataset_arg
    from openmind_curate.bids.fetch import fetch as run_fetch

    if tag and len(datasets) > 1:
        console.print("[red]error:[/red] --tag needs a single dataset; use ID:TAG per dataset")
        raise typer.Exit(2)
    datatypes = tuple(m.strip() for m in modalities.split(",") if m.strip())
    if not dry_run:
        dest = preflight.output_dir(dest, "--dest")
    failed = 0
    for arg in datasets:
        dataset, pinned = parse_dataset_arg(arg, tag)
        try:
            result = run_fetch(dataset, dest, tag=pinned, datatypes=datatypes, dry_run=dry_run)
        except FetchError as exc:
            console.print(f"[red]error:[/red] {exc}")
            failed += 1
            continue
        plan = result.plan
        table = pd.DataFrame(dry_run_table(plan))
        if len(table):
            table["MB"] = (table.pop("bytes") / 1e6).round(1)
        print_frame(table, f"{dataset} snapshot {plan.snapshot.tag}")
        if dry_run:
            console.print(f"would download {len(plan.todo)} files, {plan.bytes_todo / 1e6:.1f} MB")
        elif result.complete:
            console.print(f"{dataset} {plan.snapshot.tag}: complete in {result.dest}")
        else:
            failed += 1
            console.print(
                f"[red]{dataset}: {len(result.missing_after)} files still missing; "
                "run the same command again to resume[/red]"
            )
    if failed:
        raise typer.Exit(1)


@app.command()
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
        table = _read_index(index)
        _writable_index(index)
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


def _writable_index(index: Path) -> None:
    """A stage that will add to the index checks, before hours of work, that
    it can write and lock it."""
    preflight.output_file(index, "--index")
    with store.locked(index, timeout=30):
        pass


def _read_index(index: Path, *, images: bool = True):
    """The index through the store (absolute paths). A stage given an index
    without a single image stops here rather than writing an empty result."""
    frame = store.read_frame(index)
    if images and frame.empty:
        raise InputError(
            f"index {index} holds no images: nothing to do (did `curate crawl` find any dataset?)"
        )
    return frame


@app.command()
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

    table = _read_index(index)
    _writable_index(index)
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


@app.command()
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

    table = _read_index(index)
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


def _print_index_summary(index, per_dataset: bool = True) -> None:
    from openmind_curate.bids.summary import summarize_index

    s = summarize_index(index)
    print_frame(s.per_modality, "Images per modality")
    if per_dataset:
        print_frame(s.per_dataset, "Images per dataset")
    print_frame(s.per_status, "Header status")
    console.print(f"{s.n_images} images, {s.n_datasets} datasets, {s.n_subjects} subjects")


index_app = typer.Typer(help="Inspect an image index.", no_args_is_help=True)
app.add_typer(index_app, name="index")
cli_ratings.register(app)
cli_manifest.register(app)
cli_report.register(app)
cli_preprocess.register(app)
cli_train.register(app)
cli_finetune.register(app)


@index_app.command("summary")
@user_errors
def index_summary(
    index: Annotated[Path, typer.Argument(help="An images.parquet written by `curate crawl`.")],
) -> None:
    """Counts per modality, per dataset and per header status."""
    _print_index_summary(_read_index(index, images=False))


@app.command()
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
    cli_ratings.demo_ratings(index, out / "corpus" / "truth" / "images.parquet")
    console.rule("[bold]7/12 iqs: Image Quality Score (from the simulated ratings)")
    cli_ratings.iqs(
        index=index,
        out=out / "iqs" / "iqs.parquet",
        model=True,
        metrics=out / "metrics" / "metrics.parquet",
    )
    console.rule("[bold]8/12 build-manifest --iqs-max 2.5")
    manifest = out / "manifests" / "iqs-le-2.5.parquet"
    cli_manifest.build_manifest(iqs_max="2.5", index=index, out=manifest)
    console.rule("[bold]9/12 report: dataset overview")
    cli_report.report(index=index, manifest=manifest, out=out / "report")
    _demo_training(out, manifest, workers, quiet)
    console.rule("[bold green]demo finished")


def _demo_training(out: Path, manifest: Path, workers: int | None, quiet: bool) -> None:
    """Steps 10-12 at toy sizes: 2 mm voxels, the tiny network, 32^3 patches."""
    from openmind_curate.train.finetune import finetune_demo

    console.rule("[bold]10/12 preprocess: the manifest into a blosc2 store (2 mm, demo size)")
    store = out / "train" / "store"
    cli_preprocess.preprocess(
        manifest=manifest, out=store, spacing="2.0", workers=workers, quiet=quiet
    )
    console.rule("[bold]11/12 train: a short MAE pre-training of the tiny network")
    run = out / "train" / "mae-tiny"
    resume = (run / "checkpoint.pt").exists()
    cli_train.train_cmd(
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


def crash_log(exc: BaseException) -> Path:
    """Write the traceback of an unexpected error where the user can send it."""
    folder = Path(
        os.environ.get("OPENMIND_CURATE_LOGS")
        or Path(os.environ.get("OPENMIND_CURATE_CACHE", "~/.cache/openmind-curate")).expanduser()
        / "logs"
    )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"curate-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    lines = traceback.format_exception(type(exc), exc, exc.__traceback__)
    path.write_text(
        f"curate {' '.join(sys.argv[1:])}\nopenmind-curate {__version__}\n\n" + "".join(lines)
    )
    return path


def run() -> None:
    """The console script: a user sees a one-line summary of an internal error
    and where its traceback was logged, never a wall of frames."""
    try:
        app()
    except Exception as exc:  # noqa: BLE001 - the last line of defence
        try:
            where = f"the traceback is in {crash_log(exc)}"
        except OSError as log_exc:
            where = f"and the traceback could not be logged ({log_exc})"
        console.print(
            f"[red]internal error:[/red] {escape(f'{type(exc).__name__}: {exc}')}; "
            f"{escape(where)}. Please report it.",
            soft_wrap=True,
        )
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    run()
