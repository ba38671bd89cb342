"""`curate report`: the dataset overview, a static HTML page with PNG figures."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer

from openmind_curate import index as store
from openmind_curate import preflight
from openmind_curate.cli.common import DEFAULT_INDEX, console, plural, user_errors
from openmind_curate.preflight import InputError


def read_table(path: Path, what: str, columns: Sequence[str]):
    """A parquet (or .csv/.tsv) table given on the command line, with the
    columns the report needs; anything wrong is an InputError naming the file."""
    import pandas as pd
    import pyarrow as pa

    (path,) = preflight.input_files([path])
    try:
        if path.suffix.lower() == ".csv":
            frame = pd.read_csv(path)
        elif path.suffix.lower() == ".tsv":
            frame = pd.read_csv(path, sep="\t")
        else:
            frame = pd.read_parquet(path)
    except (OSError, ValueError, pa.ArrowException, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {what} file {path}: {exc}") from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise InputError(f"{what} file {path} lacks the column(s) {', '.join(missing)}")
    return frame


def _iqs_table(path: Path):
    import pandas as pd

    frame = read_table(path, "IQS", ("image_id", "iqs"))
    scores = pd.to_numeric(frame["iqs"], errors="coerce")
    bad = (scores.isna() & frame["iqs"].notna()) | (scores < 1) | (scores > 5)
    if bad.any():
        row = int(bad.to_numpy().nonzero()[0][0])
        raise InputError(
            f"IQS file {path}: row {row}: iqs {frame['iqs'].iloc[row]!r} is not "
            "a number from 1 to 5"
        )
    return frame.assign(iqs=scores)


@user_errors
def report(
    index: Annotated[
        Path, typer.Option("--index", help="Image index (from `curate crawl`).")
    ] = DEFAULT_INDEX,
    iqs: Annotated[
        Path | None,
        typer.Option(
            "--iqs",
            help="IQS table (parquet or CSV with image_id, iqs): replaces the index's iqs column.",
        ),
    ] = None,
    manifest: Annotated[
        Path | None,
        typer.Option(
            "--manifest",
            help="A manifest (parquet or CSV with image_id): marks the images it kept.",
        ),
    ] = None,
    out: Annotated[
        Path, typer.Option("--out", help="Folder for index.html and its PNG figures.")
    ] = Path("report"),
) -> None:
    """Write a static HTML overview of the index: images per modality, the
    cumulative images over datasets, metadata, the IQS and the top datasets."""
    from openmind_curate.manifest.report import write_report

    frame = store.read_frame(index)
    iqs_frame = _iqs_table(iqs) if iqs is not None else None
    kept = read_table(manifest, "manifest", ("image_id",)) if manifest is not None else None
    folder = preflight.output_dir(out)
    sources = {"index": str(Path(index).resolve())}
    if iqs is not None:
        sources["IQS"] = str(iqs.resolve())
    if manifest is not None:
        sources["manifest"] = str(manifest.resolve())
    page = write_report(frame, folder, iqs=iqs_frame, manifest=kept, sources=sources)
    console.print(
        f"report of {plural(len(frame), 'image')} from "
        f"{plural(frame['dataset_id'].nunique(), 'dataset')} written:"
    )
    print(page)  # plain stdout: whole, for a script or a browser


def register(app: typer.Typer) -> None:
    """Add this module's commands to `app`."""
    app.command("report")(report)
