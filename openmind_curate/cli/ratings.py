"""`curate rate`, `curate raters ...`, `curate ratings ...` and `curate iqs`: the rating stage."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from openmind_curate import preflight
from openmind_curate.cli.common import (
    DEFAULT_INDEX,
    IndexPath,
    console,
    escape,
    file_path,
    legacy_positional,
    out_file,
    out_option,
    plural,
    print_frame,
    say,
    user_errors,
)
from openmind_curate.errors import InputError

DbOpt = Annotated[
    str | None,
    typer.Option(
        "--db",
        help="Ratings database: a SQLite file or a postgresql://user@host/db URL "
        "\\[default: ratings.sqlite beside the index].",
    ),
]


@user_errors
def raters_add(
    name: Annotated[
        str, typer.Argument(metavar="NAME", help="The rater's name, as it appears in the ratings.")
    ],
    admin: Annotated[bool, typer.Option("--admin", help="May open the admin page.")] = False,
    index: IndexPath = DEFAULT_INDEX,
    db: DbOpt = None,
) -> None:
    """Register a rater and print their sign-in token (shown once; only a salted hash is kept)."""
    from openmind_curate.quality import rating_stage, ratings

    token = ratings.add_rater(rating_stage.open_db(index, db), name, admin=admin)
    where = ratings.describe(rating_stage.db_location(index, db))
    role = "admin" if admin else "rater"
    console.print(f"{role} [bold]{escape(name)}[/bold] added to {escape(where)}.", soft_wrap=True)
    console.print("Token (give it to them now: it cannot be shown again):")
    print(token)  # plain stdout, so a script can capture it


@user_errors
def raters_revoke(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The rater whose token ends.")],
    index: IndexPath = DEFAULT_INDEX,
    db: DbOpt = None,
) -> None:
    """End a rater's token now; their ratings stay. `raters add NAME` gives a new token."""
    from openmind_curate.quality import rating_stage, ratings

    ratings.revoke_rater(rating_stage.open_db(index, db, create=False), name)
    say(f"token of {name} revoked")


@user_errors
def raters_list(index: IndexPath = DEFAULT_INDEX, db: DbOpt = None) -> None:
    """Raters, their role and whether their token is active."""
    from openmind_curate.quality import rating_stage, ratings

    df = ratings.list_raters(rating_stage.open_db(index, db, create=False))
    df["active"] = df["revoked_at"].isna()
    print_frame(df[["rater_id", "is_admin", "active", "created_at"]], "Raters")


@user_errors
def ratings_plan(
    index: IndexPath = DEFAULT_INDEX,
    db: DbOpt = None,
    per_group: Annotated[int, typer.Option(min=1, help="Units per dataset x modality.")] = 2,
    raters: Annotated[int, typer.Option(min=1, help="Raters per unit.")] = 2,
    seed: Annotated[int, typer.Option(help="Seed of the picks and the queue order.")] = 0,
    repeat_fraction: Annotated[
        float, typer.Option(min=0, max=1, help="Hidden repeats per rater (intra-rater check).")
    ] = 0.0,
    gold: Annotated[
        Path | None,
        typer.Option(help="CSV/parquet of gold items: image_id and the known answers."),
    ] = None,
    rater: Annotated[
        list[str] | None,
        typer.Option(
            "--rater",
            help="Plan for these raters only \\[default: every active rater who is not an admin].",
        ),
    ] = None,
) -> None:
    """Pick units per dataset x modality and give each to K raters, in a seeded random order.

    A DWI series is one unit: its FA, MD and T2w maps are shown together and the
    score is stored under the DWI's image_id. Re-running a plan adds only what is new.
    """
    from openmind_curate.quality import rating_stage
    from openmind_curate.quality.plan import PlanConfig

    config = PlanConfig(
        per_group=per_group, raters=raters, seed=seed, repeat_fraction=repeat_fraction
    )
    _print_plan(rating_stage.plan(index, config, db=db, gold=gold, raters=rater))


def _print_plan(outcome) -> None:
    keys = ["dataset_id", "group_name"]
    groups = outcome.candidates.groupby(keys).size().rename("units")
    chosen = outcome.picked.groupby(keys).size().rename("picked")
    print_frame(
        groups.to_frame().join(chosen).fillna(0).astype(int).reset_index(),
        "Units per dataset x modality",
        40,
    )
    if len(outcome.not_rated):
        shown = outcome.not_rated[["dataset_id", "path", "reason"]]
        print_frame(shown, "Listed, not assigned", 20)
    rows = outcome.rows
    per_rater = rows.groupby(["rater_id", "kind"]).size().unstack(fill_value=0).reset_index()
    print_frame(per_rater, "Queue per rater")
    say(
        f"{plural(len(outcome.picked), 'unit')} x {outcome.config.raters} raters; "
        f"{outcome.added} new assignments in {outcome.db}"
    )


@user_errors
def ratings_export(
    out: Annotated[
        str | None, out_option("FILE", "A .csv or .parquet file to write \\[required].")
    ] = None,
    index: IndexPath = DEFAULT_INDEX,
    db: DbOpt = None,
    all_versions: Annotated[
        bool, typer.Option("--all-versions", help="Every version \\[default: the latest].")
    ] = False,
    legacy_out: Annotated[str | None, typer.Argument(metavar="OUT", hidden=True)] = None,
) -> None:
    """Write the ratings (RATINGS schema: docs/reference/tables.md), latest versions by default."""
    from openmind_curate.quality import rating_stage

    out, name = legacy_positional(out, legacy_out, "--out", "OUT")
    path = out_file(out, name)
    n = rating_stage.export_file(path, index, db=db, all_versions=all_versions)
    say(f"{plural(n, 'rating')} -> {path}")


@user_errors
def ratings_import(
    path: Annotated[
        Path, typer.Argument(metavar="FILE", help="A .csv or .parquet file in the RATINGS schema.")
    ],
    index: IndexPath = DEFAULT_INDEX,
    db: DbOpt = None,
) -> None:
    """Add ratings from a file. Every row is checked first (ranges, image_ids of the
    index, known raters); one bad row rejects the file and nothing is written."""
    from openmind_curate.quality import rating_stage

    added, rows = rating_stage.import_file(path, index, db=db)
    say(f"{plural(added, 'rating')} imported from {path} ({rows - added} already present)")


@user_errors
def ratings_agreement(
    index: IndexPath = DEFAULT_INDEX,
    db: DbOpt = None,
    out: Annotated[
        Path | None, out_option("FOLDER", "Also write the tables here (CSV files).")
    ] = None,
) -> None:
    """Inter-rater agreement per axis (weighted kappa, Krippendorff's alpha, ICC(2,k)),
    per-rater bias, intra-rater agreement on repeats and accuracy on gold items."""
    from openmind_curate.quality import rating_stage

    if out is not None:
        out = preflight.output_dir(out)
    report = rating_stage.agreement(index, db=db, out=out)
    _print_agreement(report)
    if out is not None:
        say(f"tables -> {out}")


#: Printed under the agreement tables: where the numbers are explained.
INTERPRET_POINTER = (
    "How to read kappa, alpha, ICC and the '*': the docs, Rating > Agreement >\n"
    "How to interpret (docs/guide/ratings.md in the repository)."
)
#: Widest table printed, whatever the terminal; a cell longer than this many
#: characters (a long rater name) is shortened with "…" (the CSV files keep it).
_WIDTH, _CELL = 80, 16


def _print_agreement(report) -> None:
    """The report's tables with readable names (`quality.display`), each cut into
    column groups that fit 80 columns, the '*' note, the warnings, the pointer."""
    from rich.text import Text

    from openmind_curate.quality import display
    from openmind_curate.quality.agreement import few_items

    width = min(console.width, _WIDTH)
    tables = display.agreement_tables(report)
    for name, title in display.AGREEMENT_TITLES.items():
        if title not in tables:
            continue
        table = tables[title]
        console.print(Text(title, style="bold"), width=width)
        for columns in _column_groups(table.head(30), width):
            console.print(_rich_table(table.head(30)[columns]), width=width)
        if len(table) > 30:
            console.print(f"  ... and {len(table) - 30} more", width=width)
        if few_items(getattr(report, name)).any():
            console.print("  " + escape(display.few_items_note()), width=width)
    for warning in report.warnings:
        console.print(f"[yellow]note[/yellow] {escape(warning)}", width=width)
    console.print(escape(INTERPRET_POINTER), width=width)


def _column_groups(table, width: int) -> list[list[str]]:
    """The table's columns in groups whose printed table fits `width`; every
    group starts with the row's key columns (rater, axis)."""
    from openmind_curate.quality.display import KEY_COLUMNS

    keys = [c for c in table.columns if c in KEY_COLUMNS]
    groups, current = [], list(keys)
    for col in [c for c in table.columns if c not in keys]:
        if len(current) > len(keys) and _printed_width(table[[*current, col]]) > width:
            groups.append(current)
            current = [*keys, col]
        else:
            current.append(col)
    return [*groups, current]


def _printed_width(table) -> int:
    import io

    from rich.cells import cell_len
    from rich.console import Console

    wide = Console(width=10_000, file=io.StringIO(), color_system=None)
    wide.print(_rich_table(table))
    return max(cell_len(line) for line in wide.file.getvalue().splitlines())


def _rich_table(df):
    """Keys left-aligned, numbers right; headers never broken inside a word."""
    from rich.table import Table

    from openmind_curate.quality.display import KEY_COLUMNS

    table = Table()
    for col in df.columns:
        key = col in KEY_COLUMNS
        table.add_column(escape(str(col)), justify="left" if key else "right", no_wrap=True)
    for row in df.itertuples(index=False):
        table.add_row(*[escape(_short(str(v))) for v in row])
    return table


def _short(cell: str) -> str:
    return cell if len(cell) <= _CELL else cell[: _CELL - 1] + "…"


def app_file() -> Path:
    """apps/rater.py: beside the package in a checkout, under share/ in a wheel install."""
    share = Path(sys.prefix) / "share" / "openmind-curate"
    for candidate in (
        Path(__file__).resolve().parents[2] / "apps" / "rater.py",
        share / "apps" / "rater.py",
    ):
        if candidate.is_file():
            return candidate
    raise InputError("the rater app (apps/rater.py) is not installed with this package")


@user_errors
def rate(
    index: IndexPath = DEFAULT_INDEX,
    db: DbOpt = None,
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to serve on.")] = 8501,
    address: Annotated[
        str,
        typer.Option(
            help="Address to listen on. Serve other machines through a reverse proxy "
            "with TLS (README: rating from other machines), not 0.0.0.0 in clear text."
        ),
    ] = "127.0.0.1",
    show_datasets: Annotated[
        bool, typer.Option("--show-datasets", help="Show dataset names to raters.")
    ] = False,
) -> None:
    """Serve the rater app: raters sign in with their token and score their queue."""
    from openmind_curate.quality import rating_stage

    where = rating_stage.ready_to_rate(index, db=db)
    env = {
        **os.environ,
        "OPENMIND_RATER_INDEX": str(index.resolve()),
        "OPENMIND_RATER_DB": where,
        "OPENMIND_RATER_SHOW_DATASETS": "1" if show_datasets else "0",
    }
    say(f"rater app on http://{address}:{port} (Ctrl-C stops it)")
    cmd = [sys.executable, "-m", "streamlit", "run", str(app_file())]
    cmd += ["--server.port", str(port), "--server.address", address]
    cmd += ["--server.headless", "true", "--browser.gatherUsageStats", "false"]
    cmd += ["--client.showErrorDetails", "none", "--client.toolbarMode", "minimal"]
    raise typer.Exit(_serve(cmd, env))


def _serve(cmd: list[str], env: dict[str, str]) -> int:
    """Run the Streamlit child until it ends or we are told to stop.

    The child has its own process group, so a terminal's Ctrl-C reaches it
    once, through us; SIGINT and SIGTERM are passed on (a plain `kill` of
    `curate rate` must not leave the app serving, re-parented to PID 1). The
    child gets 10 s to stop before it is killed. Exit 130/143 as a shell would.
    """
    child = subprocess.Popen(cmd, env=env, process_group=0)
    stopped: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        stopped.append(signum)
        if child.poll() is None:
            child.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = _wait(child, stopped)
        return 128 + stopped[0] if stopped else code
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if child.poll() is None:
            child.kill()
            child.wait()


def _wait(child: subprocess.Popen, stopped: list[int], grace: float = 10.0) -> int:
    """The child's exit status; once a stop signal came, at most `grace` seconds."""
    deadline = None
    while True:
        try:
            return child.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            if stopped and deadline is None:
                deadline = time.monotonic() + grace
            if deadline is not None and time.monotonic() > deadline:
                child.kill()
                return child.wait()


@user_errors
def iqs(
    index: IndexPath = DEFAULT_INDEX,
    db: DbOpt = None,
    out: Annotated[
        str, out_option("FILE", "The detailed IQS table (parquet).")
    ] = "iqs/iqs.parquet",
    model: Annotated[
        bool,
        typer.Option(
            "--model",
            help="Also predict a per-image IQS from the automatic metrics "
            "(column iqs_predicted; the paper's IQS is kept as it is).",
        ),
    ] = False,
    metrics: Annotated[
        Path, typer.Option("--metrics", help="Metrics table (from `curate metrics`), for --model.")
    ] = Path("metrics/metrics.parquet"),
    check_files: Annotated[
        bool,
        typer.Option(
            "--check-files",
            help="Warn about ratings made on a file that has changed "
            "since (reads every rated unit's files to hash them).",
        ),
    ] = False,
) -> None:
    """The paper's Image Quality Score from the ratings, written into the index.

    Per unit: the raters' mean of each axis and worst flag (each rater's latest
    regular rating); per image: their mean, 5 if corrupted or an axis is 5, +1
    for a suboptimal FOV (at most 5); per dataset x modality (a DWI and its
    maps: dataset x DWI-derived): the mean over the rated units, given to every
    image of the group. Writes iqs and iqs_image (and with --model
    iqs_predicted) for every image of the index; lower is better.
    """
    from openmind_curate.quality import iqs_stage

    path = file_path(out)  # made writable by the stage once its inputs are checked
    done = iqs_stage.run(
        index, db=db, out=path, model=model, metrics=metrics, check_files=check_files
    )
    if done.model is not None:
        _print_model(done.model)
    table, groups = done.scores.table, done.scores.groups
    print_frame(groups.assign(iqs=groups["iqs"].round(3)), "IQS per dataset x modality", 40)
    print_frame(done.kept, "Images kept at IQS <= threshold")
    scored = int(groups["iqs"].notna().sum())
    say(
        f"{plural(scored, 'group')} scored, {len(groups) - scored} unscored; "
        f"{int(table['iqs'].notna().sum())} of {plural(len(table), 'image')} have an "
        f"IQS ({int(table['iqs_image'].notna().sum())} rated themselves); "
        f"{done.replaced} index rows written to {index}; table -> {done.out}"
    )
    for warning in done.warnings:
        console.print(f"[yellow]warning[/yellow] {escape(warning)}", soft_wrap=True)


def _print_model(fitted) -> None:
    if fitted.skipped:
        return
    cv = fitted.cv
    say(
        f"per-image model, held out by dataset ({int(cv['n_folds'])} folds, "
        f"{int(cv['n_images'])} rated images from {int(cv['n_datasets'])} datasets): "
        f"Spearman {cv['spearman']:.3f}, MAE {cv['mae']:.3f}; dataset-level baseline "
        f"(training folds' mean per modality) Spearman {cv['baseline_spearman']:.3f}, "
        f"MAE {cv['baseline_mae']:.3f}"
    )
    say(f"features: {', '.join(fitted.features)}")


def demo_ratings(index: Path, truth: Path, n_raters: int = 3) -> None:
    """The demo's rating step: simulated raters fill a plan, so later stages have ratings."""
    from openmind_curate.quality import rating_stage

    outcome, n = rating_stage.simulated_ratings(index, truth, n_raters)
    _print_plan(outcome)
    console.print(
        f"[bold yellow]SIMULATED ratings:[/bold yellow] {plural(n, 'rating')} made by "
        f"{n_raters} simulated raters from the generator's truth table, with noise "
        "and a bias per rater. They stand in for human raters in this demo "
        "only."
    )
    ratings_agreement(index=index, db=None, out=None)


def register(app: typer.Typer) -> None:
    """Add `rate`, `iqs` and the `raters` and `ratings` groups to `app`."""
    app.command("rate")(rate)
    app.command("iqs")(iqs)
    raters_app = typer.Typer(
        help="Add, revoke and list raters (who may sign in to the app).", no_args_is_help=True
    )
    raters_app.command("add")(raters_add)
    raters_app.command("revoke")(raters_revoke)
    raters_app.command("list")(raters_list)
    app.add_typer(raters_app, name="raters")
    ratings_app = typer.Typer(
        help="Plan assignments; import, export and check ratings.", no_args_is_help=True
    )
    ratings_app.command("plan")(ratings_plan)
    ratings_app.command("export")(ratings_export)
    ratings_app.command("import")(ratings_import)
    ratings_app.command("agreement")(ratings_agreement)
    app.add_typer(ratings_app, name="ratings")
