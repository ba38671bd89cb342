"""What every `curate` command shares: the console, the error contract, the
shared options and the checks of option values."""

from __future__ import annotations

import functools
import importlib.util
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from openmind_curate import preflight
from openmind_curate.errors import BatchInterrupted, CurateError, InputError, MissingExtra
from openmind_curate.index_input import DEFAULT_INDEX

if TYPE_CHECKING:
    from openmind_curate.jobs import BatchResult, JobOptions

console = Console()

__all__ = ["DEFAULT_INDEX", "console", "escape"]


def error(message: str, code: int = 2) -> typer.Exit:
    """Print ``error: message`` (markup escaped) and return the Exit to raise."""
    console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)  # paths stay whole
    return typer.Exit(code)


def say(text: str) -> None:
    """Print plain text (paths, names, data): never read as rich markup."""
    console.print(escape(text), soft_wrap=True, highlight=False)


def user_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """A problem the user can fix (`errors.CurateError`, from any check or
    stage) becomes a one-line message and exit code 2, never a traceback; a
    batch stopped by Ctrl-C or SIGTERM says what was done and exits 130 or 143.
    Anything else is a bug: `cli.app.run` logs it and exits 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except CurateError as exc:
            raise error(str(exc)) from None
        except BatchInterrupted as exc:
            Console(stderr=True).print(escape(str(exc)), soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None

    return wrapper


def _installed(module: str) -> bool:
    """Whether `module` can be imported, found without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a finder that refuses it, a parent that is missing
        return False


def require_extra(command: str, extra: str, modules: tuple[str, ...]) -> None:
    """Refuse `command` (``"curate train"``) when a module of the optional
    dependency set `extra` is not installed, naming the extra and the pip line
    (`MissingExtra`: exit 2), before any work; nothing is imported to check."""
    missing = [m for m in modules if not _installed(m)]
    if missing:
        raise MissingExtra(
            f"{command} needs the optional dependencies of openmind-curate[{extra}] "
            f"(missing: {', '.join(missing)}); install them with: "
            f"pip install 'openmind-curate[{extra}]' (torch first: see README, Install)"
        )


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def print_frame(df, title: str, limit: int | None = None) -> None:
    """A DataFrame as a rich table (numbers right-aligned; cells are data, never markup)."""
    table = Table(title=escape(title), title_justify="left")
    for col in df.columns:
        numeric = str(df[col].dtype).startswith(("int", "float", "uint"))
        table.add_column(escape(str(col)), justify="right" if numeric else "left", overflow="fold")
    for row in df.head(limit).itertuples(index=False) if limit else df.itertuples(index=False):
        table.add_row(*["" if v is None else escape(str(v)) for v in row])
    console.print(table)
    if limit and len(df) > limit:
        console.print(f"  ... and {len(df) - limit} more")


# Options every batch command shares (`batch_command` adds them).
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
#: The image index, an option with the default `DEFAULT_INDEX` in every command.
IndexPath = Annotated[Path, typer.Option("--index", help="Image index (from `curate crawl`).")]
#: The manifest a training step reads (`preprocess`, `train`).
ManifestPath = Annotated[
    Path, typer.Option("--manifest", "-m", help="Manifest (from `curate build-manifest`).")
]
#: The networks `train` and `finetune` build.
Arch = Literal["resenc-l", "tiny", "primus-m", "tiny-primus"]


def out_option(kind: Literal["FILE", "FOLDER"], help: str) -> Any:
    """``--out``/``-o`` as the vocabulary has it: it names what the command
    writes, one table (FILE, taken as text so `file_path` sees a trailing
    ``/``) or many files (FOLDER). Use: ``Annotated[Path, out_option("FOLDER", "...")]``."""
    return typer.Option("--out", "-o", metavar=kind, help=help)


@dataclass(frozen=True)
class Batch:
    """The batch options of one call, as `batch_command` hands them over."""

    workers: int | None = None
    scheduler: str | None = None
    quiet: bool = False
    keep_existing: bool = False

    def job_options(self, what: str, shared: Path | None = None) -> JobOptions:
        """The runner's options, checked before any work: the scheduler
        address answers, and on a remote cluster every worker sees the
        `shared` folder the outputs go to. `what` labels the progress bar."""
        from openmind_curate.jobs import JobOptions  # the runner loads only for batch commands

        scheduler = preflight.scheduler(self.scheduler)
        if shared is not None:
            preflight.workers_see(scheduler, shared)
        return JobOptions(
            workers=self.workers,
            scheduler=scheduler,
            progress=not self.quiet,
            description=what,
            keep_existing=self.keep_existing,
        )


#: name -> (annotation, default) of the batch options, in the order --help shows them.
_BATCH_OPTIONS: dict[str, tuple[Any, Any]] = {
    "workers": (Workers, None),
    "scheduler": (Scheduler, None),
    "quiet": (Quiet, False),
    "keep_existing": (KeepExisting, False),
}


def batch_command(func: Callable[..., Any] | None = None, *, keep_existing: bool = True) -> Any:
    """Declare a batch command's shared options once: the command's
    keyword-only parameter ``batch: Batch`` becomes --workers/-j, --scheduler,
    --quiet/-q and (unless `keep_existing` is False) --keep-existing, in its
    place, so every batch command shows and checks the same ones. Python
    callers pass them by name, as for any option (``masks(workers=2)``)."""
    if func is None:
        return functools.partial(batch_command, keep_existing=keep_existing)
    names = [n for n in _BATCH_OPTIONS if keep_existing or n != "keep_existing"]
    signature = inspect.signature(func, eval_str=True)
    params: list[inspect.Parameter] = []
    for p in signature.parameters.values():
        if p.name != "batch":
            params.append(p)
            continue
        for name in names:
            annotation, default = _BATCH_OPTIONS[name]
            params.append(
                inspect.Parameter(name, p.KEYWORD_ONLY, default=default, annotation=annotation)
            )

    @functools.wraps(func)
    def command(*args: Any, **kwargs: Any) -> Any:
        values = {name: kwargs.pop(name, _BATCH_OPTIONS[name][1]) for name in names}
        return func(*args, batch=Batch(**values), **kwargs)

    command.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    return command


def finish_batch(batch: BatchResult) -> None:
    """The batch's summary line; exit code 1 if an item failed, so a script
    sees it (the summary names the failures)."""
    say(batch.summary())
    if batch.failed:
        raise typer.Exit(1)


def file_path(path: str | os.PathLike[str], option: str = "--out") -> Path:
    """A FILE output (one table), checked without touching the disk: a path
    ending in ``/`` or naming a folder is refused, so ``--out metrics/``
    never writes a file named ``metrics``. Returns it absolute."""
    text = os.fspath(path)
    if text.endswith(("/", os.sep)):
        raise InputError(
            f"{option} {text} ends in '/', a folder; give a file path "
            f"(e.g. {text}{Path(text).name or 'table'}.parquet)"
        )
    if Path(text).is_dir():
        raise InputError(f"{option} {text} is a folder; give a file path (e.g. {text}/out.parquet)")
    return Path(os.path.abspath(text))


def out_file(path: str | os.PathLike[str], option: str = "--out") -> Path:
    """`file_path`, and its folder made and proven writable (`preflight.output_file`)."""
    return preflight.output_file(file_path(path, option), option)


def legacy_positional(value: Any, legacy: Any, option: str, name: str) -> tuple[Any, str]:
    """An option that was a positional argument NAME before: the option, or
    the hidden positional with a deprecation note. Returns (value, the name to
    use in messages); neither given is an error naming the option."""
    if legacy is not None:
        if value is not None:
            raise InputError(f"give {option} once (the positional {name} is its old form)")
        Console(stderr=True).print(
            f"[yellow]note:[/yellow] the positional {name} is deprecated, use {option} "
            "(the old form goes in the next release)",
            soft_wrap=True,
        )
        return legacy, name
    if value is None:
        raise InputError(f"missing option {option}")
    return value, option


def renamed(**old_to_new: str) -> dict[str, Any]:
    """Context settings that accept renamed options under their old names for
    one release, with a notice on stderr. Old names never show in --help.

    Usage: ``app.command(context_settings=renamed(modalities="datatypes"))``;
    names are given without the leading dashes and with ``_`` for ``-``. A
    one-letter old name is a short option (``j="loader_workers"``: ``-j``).
    """
    table = {old.replace("_", "-"): new.replace("_", "-") for old, new in old_to_new.items()}

    def normalize(token: str) -> str:
        new = table.get(token)
        if new is None:
            return token
        old = f"-{token}" if len(token) == 1 else f"--{token}"
        Console(stderr=True).print(
            f"[yellow]note:[/yellow] {old} is deprecated, use --{new} "
            "(the old name goes in the next release)",
            soft_wrap=True,
        )
        # the parser puts back the prefix it split off: "-" for a short name
        return f"-{new}" if len(token) == 1 else new

    return {"token_normalize_func": normalize}
