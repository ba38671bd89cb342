"""What every `curate` command shares: the console, the error contract, tables."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from openmind_curate.index import IndexStoreError
from openmind_curate.jobs import BatchInterrupted
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
