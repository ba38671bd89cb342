"""What every `curate` command shares: the console, the error contract, tables."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from openmind_curate import index as store
from openmind_curate import preflight
from openmind_curate.index import IndexStoreError
from openmind_curate.jobs import BatchInterrupted, JobOptions
from openmind_curate.preflight import InputError

console = Console()
DEFAULT_INDEX = Path("index/images.parquet")


def error(message: str, code: int = 2) -> typer.Exit:
    console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)  # paths stay whole
    return typer.Exit(code)


def user_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Bad input found by a check (`preflight`, the index store, the crawl)
    becomes a one-line message and exit code 2, never a traceback; a batch
    stopped by Ctrl-C or SIGTERM says what was done and exits 130 or 143."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from openmind_curate.bids.crawl import NoDatasetsError

        try:
            return func(*args, **kwargs)
        except (InputError, IndexStoreError, NoDatasetsError) as exc:
            raise error(str(exc)) from None
        except BatchInterrupted as exc:
            Console(stderr=True).print(escape(str(exc)), soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None

    return wrapper


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def print_frame(df, title: str, limit: int | None = None) -> None:
    """A DataFrame as a rich table (numbers right-aligned)."""
    table = Table(title=title, title_justify="left")
    for col in df.columns:
        numeric = str(df[col].dtype).startswith(("int", "float", "uint"))
        table.add_column(str(col), justify="right" if numeric else "left", overflow="fold")
    for row in df.head(limit).itertuples(index=False) if limit else df.itertuples(index=False):
        table.add_row(*["" if v is None else str(v) for v in row])
    console.print(table)
    if limit and len(df) > limit:
        console.print(f"  ... and {len(df) - limit} more")


# Options every batch command shares.
Workers = Annotated[
    int | None,
    typer.Option("--workers", "-j", min=1, help="Local worker processes \\[default: all cores]."),
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
KeepExisting = Annotated[
    bool,
    typer.Option(
        "--keep-existing",
        help="Keep finished outputs made with other options \\[default: recompute them].",
    ),
]


def job_options(
    workers: int | None,
    scheduler: str | None,
    quiet: bool,
    what: str,
    shared: Path | None = None,
    keep_existing: bool = False,
) -> JobOptions:
    """The batch options, checked before any work: the scheduler address
    answers, and on a remote cluster every worker sees the `shared` folder
    the outputs go to."""
    scheduler = preflight.scheduler(scheduler)
    if shared is not None:
        preflight.workers_see(scheduler, shared)
    return JobOptions(
        workers=workers,
        scheduler=scheduler,
        progress=not quiet,
        description=what,
        keep_existing=keep_existing,
    )


def writable_index(index: Path) -> None:
    """A stage that will add to the index checks, before hours of work, that
    it can write and lock it."""
    preflight.output_file(index, "--index")
    with store.locked(index, timeout=30):
        pass


def read_index(index: Path, *, images: bool = True):
    """The index through the store (absolute paths). A stage given an index
    without a single image stops here rather than writing an empty result."""
    frame = store.read_frame(index)
    if images and frame.empty:
        raise InputError(
            f"index {index} holds no images: nothing to do (did `curate crawl` find any dataset?)"
        )
    return frame


def renamed(**old_to_new: str) -> dict[str, Any]:
    """Context settings that accept renamed options under their old names for
    one release, with a notice on stderr. Old names never show in --help.

    Usage: ``app.command(context_settings=renamed(modalities="datatypes"))``;
    names are given without the leading ``--`` and with ``_`` for ``-``.
    """
    table = {old.replace("_", "-"): new.replace("_", "-") for old, new in old_to_new.items()}

    def normalize(token: str) -> str:
        new = table.get(token)
        if new is None:
            return token
        Console(stderr=True).print(
            f"[yellow]note:[/yellow] --{token} is deprecated, use --{new} "
            "(the old name goes in the next release)",
            soft_wrap=True,
        )
        return new

    return {"token_normalize_func": normalize}
