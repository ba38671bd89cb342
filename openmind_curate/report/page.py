"""The report's page: HTML sections around the tables and figures, and
`write_report`, which writes ``index.html`` and its PNGs atomically. Every
user string is HTML-escaped; the page loads nothing from outside its folder
and runs no script."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from openmind_curate.atomic import atomic_write_bytes, atomic_write_text
from openmind_curate.report.builders import (
    TOP_DATASETS,
    availability_table,
    cumulative_curve,
    cumulative_marks,
    flagged_images,
    iqs_threshold_table,
    iqs_values,
    kept_mask,
    modality_table,
    problem_table,
    subject_keys,
    top_datasets,
)
from openmind_curate.report.figures import (
    cumulative_figure,
    iqs_figure,
    metadata_figure,
    modality_figure,
    png_bytes,
)

_e = html.escape

CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1400px;
       padding: 0 1.5rem; color: #222; line-height: 1.45; }
h1 { margin-bottom: .2rem; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: .2rem; margin-top: 2.5rem; }
.row { display: flex; flex-wrap: wrap; gap: 2rem; align-items: flex-start; }
table { border-collapse: collapse; font-size: .9rem; }
caption { text-align: left; font-weight: 600; padding-bottom: .3rem; }
th, td { border: 1px solid #ddd; padding: .25rem .6rem; }
th { background: #f3f3f3; text-align: left; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
.note { color: #555; font-size: .92rem; }
nav a { margin-right: 1rem; }
"""


def _cell(value: object, fmt: str | None) -> tuple[str, bool]:
    """A value as escaped cell text, and whether it is a number."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "", False
    if fmt == "pct":
        return f"{float(value):.1%}", True
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return f"{int(value):,}", True
    if isinstance(value, (float, np.floating)):
        return f"{float(value):,.2f}", True
    return _e(str(value)), False


def html_table(
    df: pd.DataFrame,
    caption: str,
    headers: Mapping[str, str] | None = None,
    formats: Mapping[str, str] | None = None,
) -> str:
    """`df` as an HTML table, every header and cell escaped."""
    headers, formats = headers or {}, formats or {}
    head = []
    for col in df.columns:
        numeric = pd.api.types.is_numeric_dtype(df[col])
        cls = ' class="num"' if numeric else ""
        head.append(f"<th{cls}>{_e(str(headers.get(col, col)))}</th>")
    body = []
    for row in df.itertuples(index=False):
        cells = []
        for col, value in zip(df.columns, row, strict=True):
            text, numeric = _cell(value, formats.get(col))
            cells.append(f'<td class="num">{text}</td>' if numeric else f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (
        f"<table><caption>{_e(caption)}</caption><thead><tr>{''.join(head)}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def _img(name: str, alt: str) -> str:
    return f'<img src="{_e(name)}" alt="{_e(alt)}">'


def _p(text: str, cls: str = "note") -> str:
    return f'<p class="{cls}">{_e(text)}</p>'


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}" if n == 1 else f"{n:,} {word}s"


Sections = tuple[list[str], dict[str, Figure]]


def _summary(index: pd.DataFrame, kept, manifest, sources) -> list[str]:
    n = len(index)
    n_datasets = int(index["dataset_id"].nunique())
    n_subjects = int(subject_keys(index).nunique())
    parts = [
        _p(
            f"{_plural(n, 'image')} from {_plural(n_datasets, 'dataset')}, "
            f"{_plural(n_subjects, 'subject')} (a subject counted once per dataset).",
            "summary",
        )
    ]
    bad = int((index["header_status"].astype(str) != "ok").sum())
    if bad:
        parts.append(
            _p(
                f"{_plural(bad, 'image')} with an unreadable or bad header "
                "(header_status other than ok) are counted too."
            )
        )
    if sources:
        items = "".join(f"<li>{_e(k)}: <code>{_e(str(v))}</code></li>" for k, v in sources.items())
        parts.append(f'<ul class="note">{items}</ul>')
    if manifest is not None:
        k = int(kept.sum())
        text = f"Manifest: {k:,} of {n:,} images kept ({k / n:.1%})." if n else "Manifest given."
        if "split" in manifest.columns:
            splits = manifest["split"].astype(str).value_counts().sort_index()
            text += " Split: " + ", ".join(f"{s} {c:,}" for s, c in splits.items()) + "."
        outside = int((~manifest["image_id"].isin(index["image_id"])).sum())
        if outside:
            text += f" {_plural(outside, 'manifest row')} not in this index."
        parts.append(_p(text, "summary"))
    parts.append(
        '<nav><a href="#modalities">Modalities</a><a href="#datasets">Datasets</a>'
        '<a href="#metadata">Metadata</a><a href="#iqs">Image quality</a>'
        '<a href="#top">Top datasets</a><a href="#checks">Automatic checks</a></nav>'
    )
    return parts


KEPT_HEADER = {"kept": "kept in the manifest"}


def _modalities_section(index: pd.DataFrame, kept) -> Sections:
    """Images per modality (Table 10)."""
    table = modality_table(index, kept)
    parts = [
        '<h2 id="modalities">Images per modality</h2>',
        _p("As in the paper's Table 10. Subjects are counted once per dataset."),
        '<div class="row">'
        + html_table(table, "Images per modality", KEPT_HEADER)
        + _img("modalities.png", "bar chart of images per modality")
        + "</div>",
    ]
    return parts, {"modalities.png": modality_figure(table)}


def _datasets_section(index: pd.DataFrame) -> Sections:
    """Cumulative images over datasets (Figure 4)."""
    curve = cumulative_curve(index)
    marks = cumulative_marks(curve)
    parts = ['<h2 id="datasets">Cumulative images over datasets</h2>']
    if marks:
        said = ", ".join(
            f"{f:.0%} from the {'largest' if k == 1 else f'{k:,} largest'}"
            for f, k in marks.items()
        )
        parts.append(
            _p(
                f"As in the paper's Figure 4. Of {_plural(len(curve), 'dataset')}: "
                f"{said.replace(' from', ' of the images come from', 1)}."
            )
        )
    else:
        parts.append(_p("No images in the index."))
    parts.append(_img("cumulative.png", "cumulative number of images over datasets"))
    return parts, {"cumulative.png": cumulative_figure(curve, marks)}


def _metadata_section(index: pd.DataFrame) -> Sections:
    """Availability table, histograms and pies (Figure 5)."""
    availability = availability_table(index)
    table = html_table(
        availability,
        "Metadata availability (fraction of images with a known value)",
        {"images": "images with a value"},
        {"fraction": "pct"},
    )
    parts = ['<h2 id="metadata">Metadata</h2>']
    if availability["images"].sum() == 0:
        parts += [
            _p(
                "No image in this index has any metadata (age, sex, handedness, "
                "health status, race, weight, BMI): the figures are omitted."
            ),
            table,
        ]
        return parts, {}
    parts += [
        _p(
            "As in the paper's Figure 5. Each panel counts only the images where "
            "its value is known: images, not subjects."
        ),
        table,
        _img("metadata.png", "metadata histograms and pies"),
    ]
    return parts, {"metadata.png": metadata_figure(index)}


def _iqs_section(index: pd.DataFrame, iqs: pd.DataFrame | None) -> Sections:
    """IQS histogram and the images kept per threshold (Table 6)."""
    scores = iqs_values(index, iqs)
    thresholds = iqs_threshold_table(scores)
    table = html_table(
        thresholds[["kept", "images", "fraction"]],
        "Images kept at each IQS threshold",
        {"kept": "IQS threshold", "images": "images kept", "fraction": "of all images"},
        {"fraction": "pct"},
    )
    parts = ['<h2 id="iqs">Image quality (IQS)</h2>']
    if not scores.notna().any():
        parts += [
            _p(
                f"No IQS: all {len(index):,} images are unrated (run `curate iqs`, or pass "
                "--iqs). The figure is omitted."
            ),
            table,
        ]
        return parts, {}
    parts += [
        _p(
            "Lower is better: 1 = clean and sharp, 5 = unusable. The IQS is "
            "the mean score of the rated images of a dataset x modality group, "
            "given to every image of the group. As in the paper's Table 6, "
            "a threshold t keeps the images with IQS ≤ t."
        ),
        '<div class="row">'
        + table
        + _img("iqs.png", "IQS histogram and images kept per threshold")
        + "</div>",
    ]
    return parts, {"iqs.png": iqs_figure(scores, thresholds)}


def _top_section(index: pd.DataFrame, kept) -> Sections:
    """The datasets with the most images (Table 9)."""
    top = top_datasets(index, TOP_DATASETS, kept)
    held = int(top["images"].sum())
    share = held / len(index) if len(index) else 0.0
    parts = [
        f'<h2 id="top">Top {len(top)} datasets by image count</h2>',
        _p(
            f"As in the paper's Table 9. Together they hold {held:,} images "
            f"({share:.1%} of all). Modalities are listed by image count."
        ),
        html_table(top, "Top datasets by image count", KEPT_HEADER),
    ]
    return parts, {}


#: Rows of the flagged-images list; the rest are counted.
FLAGGED_SHOWN = 50


@dataclass(frozen=True)
class MetricsInput:
    """The automatic metrics for the report: the table (image_id, problems)
    or None, where it was (or was looked for), and the problem codes that
    `build-manifest` drops."""

    table: pd.DataFrame | None
    path: str
    corrupt: tuple[str, ...] = ()


def _no_metrics(path: str) -> list[str]:
    return [
        _p(
            f"No metrics table was found (looked for {path}). Make one with "
            "`curate metrics` (it writes metrics/metrics.parquet beside the index "
            "folder), or pass --metrics FILE."
        )
    ]


def _flagged_list(flagged: pd.DataFrame) -> list[str]:
    """The first `FLAGGED_SHOWN` flagged images, and how many are not shown."""
    shown = flagged.head(FLAGGED_SHOWN)
    table = pd.DataFrame(
        {
            "dataset": shown["dataset"],
            "path": shown["path"],
            "problems": shown["problems"].map(", ".join),
        }
    )
    if "in_manifest" in shown.columns:
        table["in manifest"] = shown["in_manifest"].map({True: "yes", False: "no"})
    caption = f"Flagged images (broken first; {min(len(flagged), FLAGGED_SHOWN):,} shown)"
    parts = [html_table(table, caption)]
    if len(flagged) > FLAGGED_SHOWN:
        parts.append(_p(f"... and {len(flagged) - FLAGGED_SHOWN:,} more flagged images."))
    return parts


def _checks_section(index: pd.DataFrame, kept, metrics: MetricsInput | None) -> Sections:
    """The problem codes of `curate metrics`: images per code, and which are
    in the manifest."""
    parts = ['<h2 id="checks">Automatic quality checks</h2>']
    if metrics is None or metrics.table is None:
        return parts + _no_metrics(metrics.path if metrics else "none given"), {}
    flagged = flagged_images(index, metrics.table, kept, metrics.corrupt)
    codes = problem_table(flagged, metrics.corrupt)
    measured = int(index["image_id"].isin(metrics.table["image_id"]).sum())
    broken = int(flagged["corrupt"].sum())
    text = (
        f"From the metrics table of `curate metrics`: {measured:,} of {len(index):,} "
        f"images measured, {_plural(len(flagged), 'image')} with a problem, {broken:,} "
        f"of them broken ({', '.join(metrics.corrupt)}: `curate build-manifest` drops "
        "these by default)."
    )
    if "in_manifest" in flagged.columns:
        inside = int((flagged["corrupt"] & flagged["in_manifest"]).sum())
        text += f" Broken images in the manifest: {inside:,}."
    parts.append(_p(text))
    if flagged.empty:
        return parts, {}
    headers = {
        "problem": "problem code",
        "dropped": "dropped by build-manifest",
        "images": "flagged images",
        "in_manifest": "of them in the manifest",
    }
    parts.append(html_table(codes, "Flagged images per problem code", headers))
    return parts + _flagged_list(flagged), {}


def write_report(
    index: pd.DataFrame,
    out_dir: str | Path,
    *,
    iqs: pd.DataFrame | None = None,
    manifest: pd.DataFrame | None = None,
    sources: Mapping[str, str] | None = None,
    metrics: MetricsInput | None = None,
) -> Path:
    """Write ``index.html`` and its PNG figures into `out_dir`; return the page's path.

    `index` is an image index as `index.read_frame` returns it; `iqs`, an IQS
    table whose ``iqs`` replaces the index's (by image_id; an image it lacks
    is unrated); `manifest`, a manifest whose image_ids mark the images it
    kept; `sources`, the inputs to name at the top (label -> path);
    `metrics`, the automatic checks (without it the section says none was found).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    kept = kept_mask(index, manifest)
    parts = _summary(index, kept, manifest, sources)
    figures: dict[str, Figure] = {}
    for section_parts, section_figures in (
        _modalities_section(index, kept),
        _datasets_section(index),
        _metadata_section(index),
        _iqs_section(index, iqs),
        _top_section(index, kept),
        _checks_section(index, kept, metrics),
    ):
        parts += section_parts
        figures.update(section_figures)
    for name, fig in figures.items():
        atomic_write_bytes(out / name, png_bytes(fig))
    page = out / "index.html"
    atomic_write_text(page, _page("Dataset report", parts))
    return page


def _page(title: str, parts: Sequence[str]) -> str:
    csp = "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>\n"
        f"<h1>{_e(title)}</h1>\n" + "\n".join(parts) + "\n</body></html>\n"
    )
