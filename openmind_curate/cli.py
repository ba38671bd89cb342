"""The `curate` command line. Thin: parse options, call the stage, print a summary."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from openmind_curate import __version__
from openmind_curate.jobs import JobOptions

app = typer.Typer(
    name="curate",
    help="Turn public brain MRI into a quality-scored pre-training corpus.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
console = Console()

# Options every batch command shares.
Workers = Annotated[
    int | None,
    typer.Option("--workers", "-j", min=1, help="Local worker processes [default: all cores]."),
]
Scheduler = Annotated[
    str | None,
    typer.Option(
        "--scheduler",
        help="Dask scheduler address (tcp://host:8786), or 'local' for a Dask LocalCluster. "
        "Default: a local process pool.",
    ),
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]


def job_options(workers: int | None, scheduler: str | None, quiet: bool, what: str) -> JobOptions:
    return JobOptions(workers=workers, scheduler=scheduler, progress=not quiet, description=what)


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


@app.command()
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
    start = time.perf_counter()
    try:
        truth, _ = generate(out, cfg, job_options(workers, scheduler, quiet, "synth"))
    except (RuntimeError, ValueError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    _print_corpus_summary(truth.to_pandas(), out, time.perf_counter() - start)


def _print_corpus_summary(truth, out: Path, seconds: float) -> None:
    from openmind_curate.synth.summary import summarize

    s = summarize(truth)
    table = Table(title=f"Generated corpus in {out}")
    for col in s.counts.columns:
        table.add_column(str(col), justify="right" if col in ("subjects", "images") else "left")
    for row in s.counts.itertuples(index=False):
        table.add_row(*[str(v) for v in row])
    console.print(table)
    deg = Table(title="Recorded degradations (files)")
    deg.add_column("degradation")
    deg.add_column("files", justify="right")
    for name, n in s.degradations.items():
        deg.add_row(name, str(n))
    console.print(deg)
    console.print(
        f"{s.n_files} files ({s.n_images} images), {s.n_subjects} subjects, "
        f"{s.size_mb:.0f} MB, in {seconds:.1f} s. Truth table: {out / 'truth' / 'images.parquet'}"
    )


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the demo run.")] = Path(
        "demo_out"
    ),
    workers: Workers = None,
    quiet: Quiet = False,
) -> None:
    """Run every stage that exists on a generated mini corpus, on this machine.

    Today: synth, then a summary of the corpus.
    """
    console.rule("[bold]1/1 synth: generated BIDS corpus")
    synth(out / "corpus", workers=workers, quiet=quiet)
    console.rule("[bold green]demo finished")


if __name__ == "__main__":  # pragma: no cover
    app()
