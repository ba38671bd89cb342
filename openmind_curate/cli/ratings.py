"""`curate rate`, `curate raters ...` and `curate ratings ...`: the rating stage's commands."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from openmind_curate import index as store
from openmind_curate import preflight
from openmind_curate.cli.common import DEFAULT_INDEX, console, plural, print_frame, user_errors
from openmind_curate.preflight import InputError

IndexOpt = Annotated[Path, typer.Option("--index", help="Image index (from `curate crawl`).")]
DbOpt = Annotated[
    str | None,
    typer.Option(
        "--db",
        help="Ratings database: a SQLite file or a postgresql://user@host/db URL "
        "\\[default: ratings.sqlite beside the index].",
    ),
]

raters_app = typer.Typer(
    help="Add, revoke and list raters (who may sign in to the app).", no_args_is_help=True
)
ratings_app = typer.Typer(
    help="Plan assignments; import, export and check ratings.", no_args_is_help=True
)


def _db(db: str | None, index: Path) -> str:
    from openmind_curate.quality.ratings import default_db

    return db if db else str(default_db(index))


def _engine(db: str | None, index: Path, *, create: bool = True):
    from openmind_curate.quality import ratings

    where = _db(db, index)
    if "://" not in where and create:
        preflight.output_file(Path(where), "--db")
    return ratings.connect(where, create=create)


@raters_app.command("add")
@user_errors
def raters_add(
    name: Annotated[str, typer.Argument(help="The rater's name, as it appears in the ratings.")],
    admin: Annotated[bool, typer.Option("--admin", help="May open the admin page.")] = False,
    index: IndexOpt = DEFAULT_INDEX,
    db: DbOpt = None,
) -> None:
    """Register a rater and print their sign-in token (shown once; only a salted hash is kept)."""
    from openmind_curate.quality import ratings

    token = ratings.add_rater(_engine(db, index), name, admin=admin)
    role = "admin" if admin else "rater"
    console.print(f"{role} [bold]{name}[/bold] added to {ratings.describe(_db(db, index))}.")
    console.print("Token (give it to them now: it cannot be shown again):")
    print(token)  # plain stdout, so a script can capture it


@raters_app.command("revoke")
@user_errors
def raters_revoke(
    name: Annotated[str, typer.Argument(help="The rater whose token ends.")],
    index: IndexOpt = DEFAULT_INDEX,
    db: DbOpt = None,
) -> None:
    """End a rater's token now; their ratings stay. `raters add NAME` gives a new token."""
    from openmind_curate.quality import ratings

    ratings.revoke_rater(_engine(db, index, create=False), name)
    console.print(f"token of {name} revoked")


@raters_app.command("list")
@user_errors
def raters_list(index: IndexOpt = DEFAULT_INDEX, db: DbOpt = None) -> None:
    """Raters, their role and whether their token is active."""
    from openmind_curate.quality import ratings

    df = ratings.list_raters(_engine(db, index, create=False))
    df["active"] = df["revoked_at"].isna()
    print_frame(df[["rater_id", "is_admin", "active", "created_at"]], "Raters")


@ratings_app.command("plan")
@user_errors
def ratings_plan(
    index: IndexOpt = DEFAULT_INDEX,
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
    from openmind_curate.quality import plan as planning
    from openmind_curate.quality import ratings

    frame = store.read_frame(index)
    engine = _engine(db, index)
    config = planning.PlanConfig(
        per_group=per_group, raters=raters, seed=seed, repeat_fraction=repeat_fraction
    )
    candidates, not_rated = planning.units(frame)
    picked = planning.pick_units(candidates, config)
    gold_units = _gold_units(gold, candidates, engine) if gold else None
    active = ratings.list_raters(engine)
    active = active[active["revoked_at"].isna()]
    names = rater or sorted(active.loc[~active["is_admin"].astype(bool), "rater_id"])
    unknown = sorted(set(names) - set(active["rater_id"]))
    if unknown:
        raise InputError(f"not active raters: {', '.join(unknown)} (see `curate raters list`)")
    rows = planning.assign(picked, list(names), config, gold_units)
    added = ratings.add_assignments(engine, rows, plan=config.name())
    groups = candidates.groupby(["dataset_id", "group_name"]).size().rename("units")
    chosen = picked.groupby(["dataset_id", "group_name"]).size().rename("picked")
    print_frame(
        groups.to_frame().join(chosen).fillna(0).astype(int).reset_index(),
        "Units per dataset x modality",
        40,
    )
    if len(not_rated):
        print_frame(not_rated[["dataset_id", "path", "reason"]], "Listed, not assigned", 20)
    per_rater = rows.groupby(["rater_id", "kind"]).size().unstack(fill_value=0).reset_index()
    print_frame(per_rater, "Queue per rater")
    console.print(
        f"{plural(len(picked), 'unit')} x {raters} raters; {added} new assignments "
        f"in {ratings.describe(_db(db, index))}"
    )


def _gold_units(path: Path, candidates, engine):
    """The gold file's rows, checked: known units, answers in range; stored as gold answers."""
    import pandas as pd

    from openmind_curate.quality import ratings

    df = ratings.read_table_file(preflight.input_files([path])[0])
    need = ["image_id", *ratings.AXES, *ratings.FLAGS]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)}")
    known = candidates.set_index("image_id")
    bad = [
        f"row {i + 2}: image_id {v!r} is not a unit of the index"
        for i, v in enumerate(df["image_id"])
        if v not in known.index
    ]
    for axis in ratings.AXES:
        values = pd.to_numeric(df[axis], errors="coerce")
        out = ~values.between(1, 5) & (df[axis].notna() | (axis != "artifact_level"))
        bad += [f"row {i + 2}: {axis} {df[axis].iloc[i]!r} is not 1-5" for i in df.index[out]]
    if bad:
        raise InputError(f"{path}: {len(bad)} problem(s), no plan written:\n  " + "\n  ".join(bad))
    ratings.set_gold(engine, df)
    return df.join(known[["dataset_id", "group_name"]], on="image_id")


@ratings_app.command("export")
@user_errors
def ratings_export(
    out: Annotated[Path, typer.Argument(help="A .csv or .parquet file to write.")],
    index: IndexOpt = DEFAULT_INDEX,
    db: DbOpt = None,
    all_versions: Annotated[
        bool, typer.Option("--all-versions", help="Every version \\[default: the latest].")
    ] = False,
) -> None:
    """Write the ratings (RATINGS schema: docs/reference/tables.md), latest versions by default."""
    from openmind_curate.quality import ratings

    out = preflight.output_file(out)
    n = ratings.export_ratings(_engine(db, index, create=False), out, all_versions=all_versions)
    console.print(f"{plural(n, 'rating')} -> {out}")


@ratings_app.command("import")
@user_errors
def ratings_import(
    path: Annotated[Path, typer.Argument(help="A .csv or .parquet file in the RATINGS schema.")],
    index: IndexOpt = DEFAULT_INDEX,
    db: DbOpt = None,
) -> None:
    """Add ratings from a file. Every row is checked first (ranges, image_ids of the
    index, known raters); one bad row rejects the file and nothing is written."""
    from openmind_curate.quality import ratings

    path = preflight.input_files([path])[0]
    df = ratings.read_table_file(path)
    known = set(store.read_frame(index)["image_id"])
    added = ratings.import_ratings(_engine(db, index), df, known, source=str(path))
    console.print(
        f"{plural(added, 'rating')} imported from {path} ({len(df) - added} already present)"
    )


@ratings_app.command("agreement")
@user_errors
def ratings_agreement(
    index: IndexOpt = DEFAULT_INDEX,
    db: DbOpt = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Also write the tables here (folder).")
    ] = None,
) -> None:
    """Inter-rater agreement per axis (weighted kappa, Krippendorff's alpha, ICC(2,k)),
    per-rater bias, intra-rater agreement on repeats and accuracy on gold items."""
    from openmind_curate.quality import ratings
    from openmind_curate.quality.agreement import agreement

    engine = _engine(db, index, create=False)
    report = agreement(ratings.read_ratings(engine), ratings.read_gold(engine))
    for name in ("axes", "pairs", "bias", "intra", "gold"):
        table = getattr(report, name)
        if len(table):
            print_frame(table.round(3), _TITLES[name], 30)
    for warning in report.warnings:
        console.print(f"[yellow]note[/yellow] {warning}")
    if out is not None:
        out = preflight.output_dir(out)
        for name in ("axes", "pairs", "bias", "intra", "gold"):
            getattr(report, name).to_csv(out / f"agreement_{name}.csv", index=False)
        console.print(f"tables -> {out}")


_TITLES = {
    "axes": "Agreement per axis (Krippendorff's alpha, ICC(2,k) with 95% CI)",
    "pairs": "Weighted Cohen's kappa per rater pair",
    "bias": "Per-rater bias (score minus the other raters' mean)",
    "intra": "Intra-rater agreement on repeat items",
    "gold": "Accuracy on gold items",
}


def app_file() -> Path:
    """apps/rater.py: beside the package in a checkout, under share/ in a wheel install."""
    share = Path(sys.prefix) / "share" / "openmind-curate"
    for candidate in (
        Path(__file__).resolve().parents[1] / "apps" / "rater.py",
        share / "apps" / "rater.py",
    ):
        if candidate.is_file():
            return candidate
    raise InputError("the rater app (apps/rater.py) is not installed with this package")


@user_errors
def rate(
    index: IndexOpt = DEFAULT_INDEX,
    db: DbOpt = None,
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to serve on.")] = 8501,
    address: Annotated[
        str, typer.Option(help="Address to listen on (0.0.0.0 to serve a lab network).")
    ] = "127.0.0.1",
    show_datasets: Annotated[
        bool, typer.Option("--show-datasets", help="Show dataset names to raters.")
    ] = False,
) -> None:
    """Serve the rater app: raters sign in with their token and score their queue."""
    from openmind_curate.quality import ratings

    store.read(index)  # a readable index, or a clear message now
    engine = _engine(db, index, create=False)
    if ratings.list_raters(engine).empty:
        raise InputError("no raters yet: add one with `curate raters add NAME`")
    env = {
        **os.environ,
        "OPENMIND_RATER_INDEX": str(index.resolve()),
        "OPENMIND_RATER_DB": _db(db, index),
        "OPENMIND_RATER_SHOW_DATASETS": "1" if show_datasets else "0",
    }
    console.print(f"rater app on http://{address}:{port} (Ctrl-C stops it)")
    cmd = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(app_file()),
        "--server.port",
        str(port),
        "--server.address",
        address,
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
    ]
    try:
        raise typer.Exit(subprocess.call(cmd, env=env))
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


@user_errors
def iqs(
    index: IndexOpt = DEFAULT_INDEX,
    db: DbOpt = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Also write the detailed IQS table here (parquet)."),
    ] = None,
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
    ] = Path("metrics.parquet"),
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
    import pandas as pd

    from openmind_curate.quality import iqs as scoring
    from openmind_curate.quality import ratings

    indexed = store.read(index)
    frame = indexed.to_pandas()
    engine = _engine(db, index, create=False)
    rated = ratings.read_ratings(engine)
    if rated.empty:
        raise ratings.RatingsError(
            f"{ratings.describe(_db(db, index))}: no ratings yet "
            "(raters score their queue with `curate rate`)"
        )
    if not (rated["kind"] == "regular").any():
        raise ratings.RatingsError(
            f"{ratings.describe(_db(db, index))}: only repeat or gold "
            "ratings, which never feed the IQS"
        )
    metrics_df = _metrics_table(metrics) if model else None
    if out is not None:
        out = preflight.output_file(out)
    result = scoring.compute_iqs(frame, rated)
    table = result.table
    values = table[["image_id", "iqs", "iqs_image"]].copy()
    warnings = result.warnings()
    if model:
        from openmind_curate.quality import iqs_model

        fitted = iqs_model.fit_predict(metrics_df, table)
        values["iqs_predicted"] = values["image_id"].map(fitted.predictions).astype(float)
        _print_model(fitted)
        if fitted.skipped:
            warnings.append(f"no per-image model: {fitted.skipped}; iqs_predicted is null")
    if check_files:
        changed = scoring.changed_files(frame, rated)
        if changed:
            warnings.append(
                scoring.listing(
                    f"{len(changed)} unit(s) were rated on a file that has changed since "
                    "(or can no longer be read); re-rate them",
                    changed,
                    5,
                )
            )
    # the files as scored: an image re-crawled as changed meanwhile is not written
    for col in ("size_bytes", "mtime_ns"):  # exact ints (None if null), never NaN floats
        values[col] = pd.Series(indexed.column(col).to_pylist(), index=values.index, dtype=object)
    written = store.set_columns(index, values)
    if out is not None:
        from openmind_curate.atomic import atomic_path
        from openmind_curate.schema import IQS, validate

        checked = validate(table, IQS)
        with atomic_path(out) as tmp:
            import pyarrow.parquet as pq

            pq.write_table(checked, tmp)
    groups = result.groups
    print_frame(groups.assign(iqs=groups["iqs"].round(3)), "IQS per dataset x modality", 40)
    print_frame(scoring.kept_at(table["iqs"]), "Images kept at IQS <= threshold")
    scored = int(groups["iqs"].notna().sum())
    console.print(
        f"{plural(scored, 'group')} scored, {len(groups) - scored} unscored; "
        f"{int(table['iqs'].notna().sum())} of {plural(len(table), 'image')} have an "
        f"IQS ({int(table['iqs_image'].notna().sum())} rated themselves); "
        f"{written.replaced} index rows written to {index}"
        + (f"; table -> {out}" if out is not None else "")
    )
    if written.skipped:
        warnings.append(
            f"{written.skipped} image(s) changed on disk while scoring; "
            "their values were not written (run `curate iqs` again)"
        )
    for warning in warnings:
        console.print(f"[yellow]warning[/yellow] {warning}", soft_wrap=True)


def _metrics_table(path: Path):
    """The `curate metrics` table, checked: it exists and has image_id."""
    import pandas as pd
    import pyarrow as pa

    if not path.exists():
        raise InputError(
            f"{path}: no metrics table here (make it with `curate metrics`, or give --metrics)"
        )
    path = preflight.input_files([path])[0]
    try:
        df = pd.read_parquet(path)
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise InputError(f"{path}: cannot read the metrics table: {exc}") from None
    if "image_id" not in df.columns:
        raise InputError(
            f"{path}: the metrics table has no image_id column "
            "(is it the output of `curate metrics`?)"
        )
    return df


def _print_model(fitted) -> None:
    if fitted.skipped:
        return
    cv = fitted.cv
    console.print(
        f"per-image model, held out by dataset ({int(cv['n_folds'])} folds, "
        f"{int(cv['n_images'])} rated images from {int(cv['n_datasets'])} datasets): "
        f"Spearman {cv['spearman']:.3f}, MAE {cv['mae']:.3f}; dataset-level baseline "
        f"(training folds' mean per modality) Spearman {cv['baseline_spearman']:.3f}, "
        f"MAE {cv['baseline_mae']:.3f}"
    )
    console.print(f"features: {', '.join(fitted.features)}", soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("rate")(rate)
    app.command("iqs")(iqs)
    app.add_typer(raters_app, name="raters")
    app.add_typer(ratings_app, name="ratings")


def demo_ratings(index: Path, truth: Path, n_raters: int = 3) -> None:
    """The demo's rating step: simulated raters fill a plan, so later stages have ratings."""
    import pandas as pd

    from openmind_curate.quality import ratings
    from openmind_curate.quality.simulate import simulate

    engine = _engine(None, index)
    have = set(ratings.list_raters(engine)["rater_id"])
    for i in range(1, n_raters + 1):
        if f"simulated-{i}" not in have:
            ratings.add_rater(engine, f"simulated-{i}")
    ratings_plan(
        index=index,
        db=None,
        per_group=2,
        raters=2,
        seed=0,
        repeat_fraction=0.1,
        gold=None,
        rater=[f"simulated-{i}" for i in range(1, n_raters + 1)],
    )
    n = simulate(engine, pd.read_parquet(truth))
    console.print(
        f"[bold yellow]SIMULATED ratings:[/bold yellow] {plural(n, 'rating')} made by "
        f"{n_raters} simulated raters from the generator's truth table, with noise "
        "and a bias per rater. They stand in for human raters in this demo "
        "only."
    )
    ratings_agreement(index=index, db=None, out=None)
