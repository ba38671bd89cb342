"""The dataset report (`curate report`): one static HTML page with PNG figures.

It describes an image index the way the OpenMind paper describes its corpus:

- images per modality (Table 10): a table of images, datasets and subjects,
  and a bar chart;
- the cumulative number of images over datasets, largest first, with the
  number of datasets that hold 50/75/90% of the images (Figure 4);
- metadata availability and distributions (Figure 5): the fraction of images
  with each field known, the age/weight/BMI histograms and the sex,
  handedness, health status and race pies, each over the images where the
  value is known ("n = ... of N images with a known value");
- the IQS distribution and the images kept at each IQS threshold (Table 6);
- the top datasets by image count (Table 9).

The builders (`modality_table`, `cumulative_curve`, ...) are pure functions of
the index DataFrame, vectorized so a 113,921-row index takes seconds. Figures
are drawn with matplotlib's object API (`Figure` + `FigureCanvasAgg`, never
pyplot: no global state, safe in threads). Every string that reaches the page
is HTML-escaped (dataset names and metadata come from user files), the page
needs nothing outside its folder and runs no script, and every file is
written atomically.
"""

from __future__ import annotations

import html
import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from openmind_curate.atomic import atomic_write_bytes, atomic_write_text

#: IQS thresholds of the kept-images table (lower IQS is better; paper Table 6).
IQS_THRESHOLDS: tuple[float, ...] = (1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0)
#: Fractions of all images marked on the cumulative curve (paper Figure 4).
CUMULATIVE_MARKS: tuple[float, ...] = (0.5, 0.75, 0.9)
#: Rows of the top-datasets table (paper Table 9 lists 12).
TOP_DATASETS = 12
#: Metadata fields of the availability table, in the order shown.
METADATA_FIELDS: tuple[str, ...] = (
    "age",
    "sex",
    "handedness",
    "health_status",
    "race",
    "weight",
    "bmi",
)
#: The histograms and pies of the metadata figure: column, title, unit.
HISTOGRAMS: tuple[tuple[str, str, str], ...] = (
    ("age", "age", "years"),
    ("weight", "weight", "kg"),
    ("bmi", "BMI", "kg/m²"),
)
PIES: tuple[tuple[str, str], ...] = (
    ("sex", "sex"),
    ("handedness", "handedness"),
    ("health_status", "health status"),
    ("race", "race"),
)
#: Readable names of coded values.
VALUE_LABELS: dict[str, dict[str, str]] = {
    "sex": {"M": "male", "F": "female", "O": "other"},
    "handedness": {"R": "right", "L": "left", "A": "ambidextrous"},
}
#: A pie shows this many categories at most; the rest are pooled.
PIE_CATEGORIES = 6
IQS_BIN_WIDTH = 0.25
DPI = 100

# ------------------------------------------------------------------ builders


def known(values: pd.Series) -> pd.Series:
    """True where a value is known: not null and, for text, not blank."""
    mask = values.notna()
    if not pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        mask &= values.where(mask, "").astype(str).str.strip().ne("")
    return mask.astype(bool)


def _subject_keys(index: pd.DataFrame) -> pd.Series:
    """dataset/subject (subject labels are only unique within a dataset);
    null where the subject is unknown."""
    subject = index["subject"]
    keys = index["dataset_id"].astype(str) + "/" + subject.astype(str)
    return keys.where(known(subject))


def kept_mask(index: pd.DataFrame, manifest: pd.DataFrame | None) -> pd.Series | None:
    """Which index rows the manifest kept (by image_id); None without a manifest."""
    if manifest is None:
        return None
    return index["image_id"].isin(manifest["image_id"])


def modality_table(index: pd.DataFrame, kept: pd.Series | None = None) -> pd.DataFrame:
    """Images, datasets and subjects per modality, most images first (Table 10).

    With `kept` (a boolean Series aligned with `index`), a ``kept`` column
    counts the images the manifest kept."""
    frame = pd.DataFrame(
        {
            "modality": index["modality"].astype(str),
            "dataset_id": index["dataset_id"].astype(str),
            "subject": _subject_keys(index),
        }
    )
    groups = frame.groupby("modality", sort=False)
    table = pd.DataFrame(
        {
            "images": groups.size(),
            "datasets": groups["dataset_id"].nunique(),
            "subjects": groups["subject"].nunique(),
        }
    )
    if kept is not None:
        counts = frame.loc[kept.to_numpy(bool)].groupby("modality").size()
        table["kept"] = counts.reindex(table.index, fill_value=0)
    table = table.rename_axis("modality").reset_index()
    table = table.sort_values(["images", "modality"], ascending=[False, True], kind="stable")
    table = table.reset_index(drop=True)
    for col in table.columns[1:]:
        table[col] = table[col].astype("int64")
    return table


def cumulative_curve(index: pd.DataFrame) -> pd.DataFrame:
    """Datasets sorted by image count (largest first; ties by name) with the
    running total: columns datasets (1..D), dataset_id, images, cumulative,
    fraction (of all images)."""
    sizes = index["dataset_id"].astype(str).value_counts()
    sizes = sizes.rename_axis("dataset_id").rename("images").reset_index()
    sizes = sizes.sort_values(["images", "dataset_id"], ascending=[False, True], kind="stable")
    sizes = sizes.reset_index(drop=True)
    sizes["images"] = sizes["images"].astype("int64")
    sizes.insert(0, "datasets", np.arange(1, len(sizes) + 1, dtype="int64"))
    sizes["cumulative"] = sizes["images"].cumsum().astype("int64")
    total = int(sizes["images"].sum())
    sizes["fraction"] = sizes["cumulative"] / total if total else 0.0
    return sizes


def cumulative_marks(
    curve: pd.DataFrame, marks: Sequence[float] = CUMULATIVE_MARKS
) -> dict[float, int]:
    """For each fraction f, the fewest datasets (largest first) that hold at
    least f of all images ("50% of all images originate from 12 datasets")."""
    if curve.empty:
        return {}
    cumulative = curve["cumulative"].to_numpy()
    total = int(cumulative[-1])
    out = {}
    for f in marks:
        target = int(np.ceil(f * total - 1e-9))
        out[f] = int(np.searchsorted(cumulative, target, side="left")) + 1
    return out


def availability_table(
    index: pd.DataFrame, fields: Sequence[str] = METADATA_FIELDS
) -> pd.DataFrame:
    """Per metadata field, the images with a known value and their fraction."""
    n = len(index)
    rows = []
    for field in fields:
        count = int(known(index[field]).sum()) if field in index.columns else 0
        rows.append({"field": field, "images": count, "fraction": count / n if n else 0.0})
    return pd.DataFrame(rows, columns=["field", "images", "fraction"])


def category_counts(
    values: pd.Series, labels: Mapping[str, str] | None = None, top: int = PIE_CATEGORIES
) -> pd.Series:
    """Counts of the known values, most frequent first, coded values given
    their names; beyond `top` categories the rest are pooled as one."""
    shown = values[known(values)].astype(str).str.strip()
    if labels:
        shown = shown.map(lambda v: labels.get(v, v))
    counts = shown.value_counts()
    counts = counts.sort_index(kind="stable").sort_values(ascending=False, kind="stable")
    if len(counts) > top:
        rest = counts.iloc[top - 1 :]
        counts = pd.concat(
            [counts.iloc[: top - 1], pd.Series({f"{len(rest)} others": int(rest.sum())})]
        )
    return counts.astype("int64")


def iqs_values(index: pd.DataFrame, iqs: pd.DataFrame | None = None) -> pd.Series:
    """Each image's IQS (float, NaN if unrated), aligned with `index`.

    With an IQS table, its ``iqs`` replaces the index's column, by image_id;
    an image the table lacks is unrated."""
    if iqs is None:
        values = index["iqs"]
    else:
        scores = iqs.drop_duplicates("image_id", keep="last").set_index("image_id")["iqs"]
        values = index["image_id"].map(scores)
    return pd.to_numeric(values, errors="coerce").astype("float64")


def iqs_threshold_table(
    values: pd.Series, thresholds: Sequence[float] = IQS_THRESHOLDS
) -> pd.DataFrame:
    """Images kept at each IQS threshold (IQS <= t; lower is better), then the
    unrated images and all images: columns kept, threshold, images, fraction."""
    scores = values.to_numpy(dtype="float64")
    n = len(scores)
    rated = np.sort(scores[~np.isnan(scores)])
    kept = np.searchsorted(rated, np.asarray(thresholds, dtype="float64"), side="right")
    rows = [
        {"kept": f"IQS ≤ {t:g}", "threshold": float(t), "images": int(k)}
        for t, k in zip(thresholds, kept, strict=True)
    ]
    rows.append({"kept": "unrated (no IQS)", "threshold": np.nan, "images": n - len(rated)})
    rows.append({"kept": "all images", "threshold": np.nan, "images": n})
    table = pd.DataFrame(rows, columns=["kept", "threshold", "images"])
    table["fraction"] = table["images"] / n if n else 0.0
    return table


def top_datasets(
    index: pd.DataFrame, n: int = TOP_DATASETS, kept: pd.Series | None = None
) -> pd.DataFrame:
    """The `n` datasets with the most images (Table 9): dataset, images,
    subjects, modalities (most images first), and ``kept`` with a manifest."""
    frame = pd.DataFrame(
        {
            "dataset": index["dataset_id"].astype(str),
            "modality": index["modality"].astype(str),
            "subject": _subject_keys(index),
        }
    )
    groups = frame.groupby("dataset", sort=False)
    table = pd.DataFrame({"images": groups.size(), "subjects": groups["subject"].nunique()})
    if kept is not None:
        counts = frame.loc[kept.to_numpy(bool)].groupby("dataset").size()
        table["kept"] = counts.reindex(table.index, fill_value=0)
    table = table.rename_axis("dataset").reset_index()
    table = table.sort_values(["images", "dataset"], ascending=[False, True], kind="stable")
    table = table.head(n).reset_index(drop=True)
    top = frame[frame["dataset"].isin(table["dataset"])]
    per = top.groupby(["dataset", "modality"]).size().rename("count").reset_index()
    per = per.sort_values(["dataset", "count", "modality"], ascending=[True, False, True])
    names = per.groupby("dataset", sort=False)["modality"].agg(", ".join)
    table.insert(3, "modalities", table["dataset"].map(names).fillna(""))
    for col in ("images", "subjects", *(["kept"] if kept is not None else [])):
        table[col] = table[col].astype("int64")
    return table


# ------------------------------------------------------------------- figures


def _n(value: float) -> str:
    return f"{int(value):,}"


def _plain(text: object, limit: int = 32) -> str:
    """A user string as matplotlib text: shortened, and no mathtext ($...$)."""
    s = str(text)
    s = s if len(s) <= limit else s[: limit - 1] + "…"
    return s.replace("$", r"\$")


def _no_data(ax, message: str) -> None:
    ax.text(
        0.5,
        0.5,
        message,
        ha="center",
        va="center",
        transform=ax.transAxes,
        fontsize=10,
        color="0.35",
        wrap=True,
    )
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG, rendered by its own Agg canvas."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def modality_figure(table: pd.DataFrame) -> Figure:
    """Horizontal bars of images per modality, counts at the bar ends."""
    rows = max(len(table), 1)
    fig = Figure(figsize=(6.5, 1.4 + 0.3 * rows), constrained_layout=True)
    ax = fig.add_subplot()
    total = int(table["images"].sum()) if len(table) else 0
    ax.set_title(f"Images per modality (n = {_n(total)} images, {len(table)} modalities)")
    if table.empty:
        _no_data(ax, "no images in the index")
        return fig
    y = np.arange(len(table))
    bars = ax.barh(y, table["images"], color="#4c72b0", label="all images")
    ax.bar_label(bars, labels=[_n(v) for v in table["images"]], padding=3, fontsize=8)
    if "kept" in table.columns:
        ax.barh(y, table["kept"], height=0.45, color="#dd8452", label="kept in the manifest")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_yticks(y, [_plain(m) for m in table["modality"]], fontsize=9)
    ax.invert_yaxis()
    ax.set_xlim(0, table["images"].max() * 1.15)
    ax.set_xlabel("images (count)")
    ax.set_ylabel("modality")
    ax.xaxis.set_major_locator(MaxNLocator(nbins=6, integer=True))
    return fig


def cumulative_figure(curve: pd.DataFrame, marks: Mapping[float, int]) -> Figure:
    """The cumulative image count over datasets, largest first (Figure 4)."""
    fig = Figure(figsize=(8, 4.8), constrained_layout=True)
    ax = fig.add_subplot()
    total = int(curve["images"].sum()) if len(curve) else 0
    d = len(curve)
    ax.set_title(
        f"Cumulative images over datasets, largest first\n"
        f"(n = {_n(total)} images from {_n(d)} datasets)"
    )
    if not total:
        _no_data(ax, "no images in the index")
        return fig
    x = np.concatenate([[0], curve["datasets"].to_numpy()])
    y = np.concatenate([[0], curve["cumulative"].to_numpy()])
    ax.plot(x, y, color="#4c72b0", lw=1.8, marker="o" if d <= 40 else None, ms=3)
    lines = []
    for (f, k), colour in zip(marks.items(), ("#c44e52", "#dd8452", "#55a868"), strict=False):
        level = curve["cumulative"].iloc[k - 1]
        ax.plot([0, k], [f * total, f * total], ls="--", lw=1, color=colour)
        ax.plot([k, k], [0, level], ls="--", lw=1, color=colour)
        ax.plot([k], [level], "o", color=colour, ms=5)
        lines.append(f"{f:.0%} of images: {_n(k)} {'dataset' if k == 1 else 'datasets'}")
    ax.text(
        0.97,
        0.05,
        "\n".join(lines),
        transform=ax.transAxes,
        ha="right",
        va="bottom",
        fontsize=9,
        bbox=dict(boxstyle="round", fc="white", ec="0.7"),
    )
    ax.set_xlim(0, d * 1.02 + 0.2)
    ax.set_ylim(0, total * 1.05)
    ax.set_xlabel("number of datasets (sorted by image count, largest first)")
    ax.set_ylabel("images (cumulative count)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.secondary_yaxis(
        "right", functions=(lambda v: v / total * 100, lambda p: p * total / 100)
    ).set_ylabel("% of all images")
    ax.grid(alpha=0.3)
    return fig


def _histogram(ax, values: pd.Series, name: str, unit: str, n_total: int) -> None:
    data = values[known(values)].to_numpy(dtype="float64")
    ax.set_title(
        f"{name}\nn = {_n(len(data))} of {_n(n_total)} images with a known value", fontsize=10
    )
    if not len(data):
        _no_data(ax, f"no data: no image has a known {name}")
        return
    if name == "age":
        top = max(100.0, float(np.ceil(data.max() / 5) * 5))
        edges = np.arange(0.0, top + 5, 5.0)
    else:
        edges = np.histogram_bin_edges(data, bins=20)
    counts, edges = np.histogram(data, bins=edges)
    ax.stairs(counts, edges, fill=True, color="#4c72b0", alpha=0.85)
    ax.set_xlabel(f"{name} ({unit})")
    ax.set_ylabel("images")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))


def _pie(ax, values: pd.Series, field: str, name: str, n_total: int) -> None:
    counts = category_counts(values, VALUE_LABELS.get(field))
    n = int(counts.sum())
    ax.set_title(f"{name}\nn = {_n(n)} of {_n(n_total)}\nimages with a known value", fontsize=10)
    if not n:
        ax.set_aspect("equal")
        _no_data(ax, f"no data: no image has a known {name}")
        return
    wedges, _texts, _pct = ax.pie(
        counts.to_numpy(),
        startangle=90,
        counterclock=False,
        autopct=lambda p: f"{p:.0f}%" if p >= 5 else "",
        pctdistance=0.72,
        textprops={"fontsize": 8, "color": "white"},
        wedgeprops={"linewidth": 0.8, "edgecolor": "white"},
    )
    ax.set_aspect("equal")
    labels = [f"{_plain(k)} ({_n(v)})" for k, v in counts.items()]
    ax.legend(
        wedges,
        labels,
        loc="upper center",
        bbox_to_anchor=(0.5, 0.0),
        fontsize=8,
        frameon=False,
        ncol=1,
    )


def metadata_figure(index: pd.DataFrame) -> Figure:
    """Age, weight and BMI histograms over the images with a known value, and
    the sex, handedness, health status and race pies (Figure 5)."""
    n_total = len(index)
    fig = Figure(figsize=(14, 9.5), constrained_layout=True)
    fig.suptitle(
        f"Metadata of the {_n(n_total)} images: each panel counts only the images "
        "where that value is known",
        fontsize=12,
    )
    grid = fig.add_gridspec(2, 12, height_ratios=[1, 1.35])
    for i, (col, name, unit) in enumerate(HISTOGRAMS):
        _histogram(fig.add_subplot(grid[0, 4 * i : 4 * i + 4]), index[col], name, unit, n_total)
    for i, (col, name) in enumerate(PIES):
        _pie(fig.add_subplot(grid[1, 3 * i : 3 * i + 3]), index[col], col, name, n_total)
    return fig


def iqs_figure(values: pd.Series, thresholds: pd.DataFrame) -> Figure:
    """The IQS histogram with counts, and the images kept per threshold (Table 6)."""
    scores = values.to_numpy(dtype="float64")
    rated = scores[~np.isnan(scores)]
    n, unrated = len(scores), int(np.isnan(scores).sum())
    fig = Figure(figsize=(13, 4.8), constrained_layout=True)
    left, right = fig.subplots(1, 2, width_ratios=[1.2, 1])
    left.set_title(
        f"IQS distribution (n = {_n(len(rated))} of {_n(n)} images rated; {_n(unrated)} unrated)"
    )
    edges = np.arange(1.0, 5.0 + IQS_BIN_WIDTH / 2, IQS_BIN_WIDTH)
    counts, _ = np.histogram(np.clip(rated, 1.0, 5.0), bins=edges)
    bars = left.bar(
        edges[:-1], counts, width=IQS_BIN_WIDTH, align="edge", color="#4c72b0", edgecolor="white"
    )
    left.bar_label(bars, labels=[_n(c) if c else "" for c in counts], fontsize=7, padding=2)
    left.set_xlim(1, 5)
    left.set_ylim(0, max(int(counts.max()), 1) * 1.15)
    left.set_xlabel("IQS (1 = best ... 5 = worst; group score per dataset x modality)")
    left.set_ylabel("images")
    left.yaxis.set_major_locator(MaxNLocator(integer=True))
    rows = thresholds[thresholds["kept"] != "all images"]
    labels = [f"≤ {t:g}" if not np.isnan(t) else "unrated" for t in rows["threshold"]]
    colours = ["#55a868" if not np.isnan(t) else "0.6" for t in rows["threshold"]]
    x = np.arange(len(rows))
    bars = right.bar(x, rows["images"], color=colours)
    right.bar_label(bars, labels=[_n(v) for v in rows["images"]], fontsize=7, padding=2)
    right.set_xticks(x, labels)
    right.set_ylim(0, max(n, 1) * 1.12)
    right.set_title(f"Images kept at each IQS threshold (of {_n(n)} images)")
    right.set_xlabel("IQS threshold (images with IQS ≤ t are kept)")
    right.set_ylabel("images kept")
    right.yaxis.set_major_locator(MaxNLocator(integer=True))
    return fig


# ---------------------------------------------------------------------- HTML

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
    n_subjects = int(_subject_keys(index).nunique())
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
        '<a href="#top">Top datasets</a></nav>'
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


def write_report(
    index: pd.DataFrame,
    out_dir: str | Path,
    *,
    iqs: pd.DataFrame | None = None,
    manifest: pd.DataFrame | None = None,
    sources: Mapping[str, str] | None = None,
) -> Path:
    """Write ``index.html`` and its PNG figures into `out_dir`; return the page's path.

    `index` is an image index as `index.read_frame` returns it; `iqs`, an IQS
    table whose ``iqs`` replaces the index's (by image_id; an image it lacks
    is unrated); `manifest`, a manifest whose image_ids mark the images it
    kept; `sources`, the inputs to name at the top (label -> path).
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
