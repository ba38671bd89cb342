"""The `curate` command line. Thin: parse options, call the stage, print a summary."""

from __future__ import annotations

import gc
import logging
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from openmind_curate import __version__
from openmind_curate.cli import (
    corpus,
    demo,
    finetune,
    manifest,
    preprocess,
    process,
    ratings,
    report,
    train,
)
from openmind_curate.cli.common import console

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


for _group in (corpus, process, ratings, manifest, report, preprocess, train, finetune, demo):
    _group.register(app)


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
    except SystemExit:
        # Objects alive now live until exit: freezing them spares the
        # interpreter's final collections (0.1-0.2 CPU-s per command).
        gc.freeze()
        raise
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
