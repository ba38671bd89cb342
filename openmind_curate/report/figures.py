"""The report's figures, drawn with matplotlib's object API (`Figure` +
`FigureCanvasAgg`, never pyplot: no global state, safe in threads)."""

from __future__ import annotations

import io
from collections.abc import Mapping

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from openmind_curate.report.builders import (
    HISTOGRAMS,
    IQS_BIN_WIDTH,
    PIES,
    VALUE_LABELS,
    category_counts,
    known,
)

DPI = 100


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
