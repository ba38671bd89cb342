"""`curate report`: known answers of the builders, escaping, edge cases, the
CLI, and the page in headless Chromium."""

from __future__ import annotations

import html
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from openmind_curate import index as store
from openmind_curate.cli import app
from openmind_curate.report import builders as report
from openmind_curate.report import write_report
from openmind_curate.report.page import MetricsInput
from openmind_curate.schema import IMAGE_INDEX, rows_to_table

HEADINGS = (
    "Dataset report",
    "Images per modality",
    "Cumulative images over datasets",
    "Metadata",
    "Image quality (IQS)",
    "Top 3 datasets by image count",
    "Automatic quality checks",
)
runner = CliRunner()
ENV = {"COLUMNS": "200"}

# The hand-built index: (dataset, subject, modality, iqs, age, sex, race).
# Datasets hold 5, 3 and 2 images; IQS is a group score (dataset x modality).
ROWS = [
    ("ds-a", "1", "T1w", 1.5, 20.0, "F", "Asian"),
    ("ds-a", "2", "T1w", 1.5, 30.0, "M", None),
    ("ds-a", "3", "T1w", 1.5, None, "F", None),
    ("ds-a", "1", "T2w", 2.2, 20.0, "F", "Asian"),
    ("ds-a", "2", "T2w", 2.2, 30.0, "M", None),
    ("ds-b", "1", "T1w", 3.0, 70.0, "M", "White"),
    ("ds-b", "1", "T1w", 3.0, 70.0, "M", "White"),
    ("ds-b", "1", "FLAIR", None, 70.0, "M", "White"),
    ("ds-c", "9", "T1w", 4.8, None, None, None),
    ("ds-c", "9", "T2w", None, None, None, "  "),  # blank: unknown
]


def index_table(rows=ROWS):
    """The rows as an Arrow image index."""
    records = [
        dict(
            image_id=f"img{i}",
            dataset_id=d,
            subject=s,
            modality=m,
            iqs=q,
            age=a,
            sex=x,
            race=r,
            suffix=m,
            extension=".nii.gz",
            is_derivative=False,
            root=f"/data/{d}",
            path=f"sub-{s}/anat/sub-{s}_{i}_{m}.nii.gz",
            size_bytes=1000,
            header_status="ok",
        )
        for i, (d, s, m, q, a, x, r) in enumerate(rows)
    ]
    return rows_to_table(records, IMAGE_INDEX)


def make_index(rows=ROWS) -> pd.DataFrame:
    """An index DataFrame with the dtypes `index.read_frame` gives."""
    return index_table(rows).to_pandas()


def test_modality_table_known_answer():
    index = make_index()
    table = report.modality_table(index).set_index("modality")
    assert list(table.index) == ["T1w", "T2w", "FLAIR"]  # most images first
    # T1w: 6 images in a, b, c; subjects a/1, a/2, a/3, b/1, c/9 (b/1 twice counts once)
    assert table.loc["T1w"].tolist() == [6, 3, 5]
    assert table.loc["T2w"].tolist() == [3, 2, 3]  # a/1, a/2, c/9
    assert table.loc["FLAIR"].tolist() == [1, 1, 1]
    kept = index["image_id"].isin(["img0", "img5", "img7"])
    with_kept = report.modality_table(index, kept).set_index("modality")
    assert with_kept["kept"].to_dict() == {"T1w": 2, "T2w": 0, "FLAIR": 1}


def test_cumulative_curve_and_marks_known_answer():
    curve = report.cumulative_curve(make_index())
    assert curve["dataset_id"].tolist() == ["ds-a", "ds-b", "ds-c"]
    assert curve["cumulative"].tolist() == [5, 8, 10]
    # 50% of 10 = 5: ds-a alone; 75% = 7.5 -> 8: a + b; 90% = 9: all three
    assert report.cumulative_marks(curve) == {0.5: 1, 0.75: 2, 0.9: 3}
    single = report.cumulative_curve(make_index(ROWS[:5]))
    assert report.cumulative_marks(single) == {0.5: 1, 0.75: 1, 0.9: 1}
    assert report.cumulative_marks(report.cumulative_curve(make_index([]))) == {}


def test_iqs_threshold_table_known_answer():
    index = make_index()
    table = report.iqs_threshold_table(report.iqs_values(index)).set_index("kept")
    # IQS per image: 1.5 x3, 2.2 x2, 3.0 x2, 4.8 x1, unrated x2
    expected = {
        "IQS ≤ 1.5": 3,
        "IQS ≤ 2": 3,
        "IQS ≤ 2.5": 5,
        "IQS ≤ 3": 7,
        "IQS ≤ 3.5": 7,
        "IQS ≤ 4": 7,
        "IQS ≤ 4.5": 7,
        "IQS ≤ 5": 8,
        "unrated (no IQS)": 2,
        "all images": 10,
    }
    assert table["images"].to_dict() == expected
    assert table.loc["IQS ≤ 3", "fraction"] == pytest.approx(0.7)
    # an IQS table replaces the index's scores, by image_id; an image it lacks is unrated
    iqs = pd.DataFrame({"image_id": ["img0", "img9", "img9"], "iqs": [4.0, 2.0, 1.0]})
    scores = report.iqs_values(index, iqs)
    assert scores.iloc[0] == 4.0 and scores.iloc[9] == 1.0  # the last row of a duplicate
    assert scores.isna().sum() == 8


def test_availability_and_category_counts():
    index = make_index()
    table = report.availability_table(index).set_index("field")
    assert table.loc["age", "images"] == 7 and table.loc["age", "fraction"] == pytest.approx(0.7)
    assert table.loc["sex", "images"] == 8
    assert table.loc["race", "images"] == 5  # the blank value is unknown
    assert table.loc["handedness", "fraction"] == 0.0
    sex = report.category_counts(index["sex"], report.VALUE_LABELS["sex"])
    assert sex.to_dict() == {"male": 5, "female": 3}
    many = pd.Series(list("aabbccddeeffgh") + [None])
    pooled = report.category_counts(many, top=4)
    assert pooled.to_dict() == {"a": 2, "b": 2, "c": 2, "5 others": 8}


def test_top_datasets_known_answer():
    index = make_index()
    kept = index["image_id"].isin(["img0", "img9"])
    top = report.top_datasets(index, n=2, kept=kept)
    assert top["dataset"].tolist() == ["ds-a", "ds-b"]
    assert top["images"].tolist() == [5, 3]
    assert top["subjects"].tolist() == [3, 1]
    assert top["modalities"].tolist() == ["T1w, T2w", "T1w, FLAIR"]
    assert top["kept"].tolist() == [1, 0]


def test_html_escapes_user_strings(tmp_path):
    evil = "<script>alert(1)</script>"
    rows = [(evil, "1", "T1w", 2.0, 30.0, "F", "$x$ <b>"), *ROWS[5:]]
    sources = {"index": '/data/"><img src=x onerror=alert(2)>.parquet'}
    page = write_report(make_index(rows), tmp_path / "out", sources=sources).read_text()
    assert evil not in page and "<script" not in page.lower()
    assert html.escape(evil) in page  # the dataset, in the top-datasets table
    assert "<img src=x" not in page and html.escape(sources["index"]) in page


@pytest.mark.parametrize(
    "case",
    ["no_iqs", "no_metadata", "single_dataset", "empty"],
)
def test_edge_cases_write_a_page(tmp_path, case):
    index = make_index([] if case == "empty" else ROWS[:5] if case == "single_dataset" else ROWS)
    if case == "no_iqs":
        index["iqs"] = np.nan
    if case == "no_metadata":
        for col in report.METADATA_FIELDS:
            index[col] = np.nan
    page = write_report(index, tmp_path / case)
    text = page.read_text()
    for name in ("modalities.png", "cumulative.png"):
        assert (page.parent / name).stat().st_size > 0
    if case in ("no_iqs", "empty"):
        assert "No IQS: all" in text and not (page.parent / "iqs.png").exists()
    if case in ("no_metadata", "empty"):
        assert "has any metadata" in text and not (page.parent / "metadata.png").exists()
    if case == "single_dataset":
        assert "Of 1 dataset: 50% of the images come from the largest, 75% from the" in text
    assert not [p for p in page.parent.iterdir() if p.name.startswith(".")]  # no temp left


def test_manifest_marks_kept_images(tmp_path):
    index = make_index()
    manifest = index.loc[[0, 1, 5]].assign(split=["train", "train", "val"])
    manifest = pd.concat([manifest, manifest.iloc[:1].assign(image_id="elsewhere")])
    text = write_report(index, tmp_path, manifest=manifest).read_text()
    assert "Manifest: 3 of 10 images kept (30.0%)" in text
    assert "Split: train 3, val 1." in text and "1 manifest row not in this index" in text
    assert "kept in the manifest" in text


CORRUPT = ("unreadable", "nonfinite", "all_zero", "constant")
# Metrics rows: img1 nonfinite, img3 all_zero + fov_cut, img5 fov_cut only,
# img6 no problem, img9 none; "gone" is not in the index.
METRICS_ROWS = {
    "img1": ["nonfinite"],
    "img3": ["all_zero", "fov_cut"],
    "img5": ["fov_cut"],
    "img6": [],
    "gone": ["constant"],
}


def metrics_frame() -> pd.DataFrame:
    return pd.DataFrame({"image_id": list(METRICS_ROWS), "problems": list(METRICS_ROWS.values())})


def test_flagged_images_and_problem_table_known_answer():
    index = make_index()
    kept = index["image_id"].isin(["img1", "img5", "img7"])
    flagged = report.flagged_images(index, metrics_frame(), kept, CORRUPT)
    # broken first, by dataset and path (img3's sub-1/... before img1's sub-2/...),
    # then img5; img6 (no problem) and "gone" (not in the index) left out
    assert flagged["image_id"].tolist() == ["img3", "img1", "img5"]
    assert flagged["corrupt"].tolist() == [True, True, False]
    assert flagged["in_manifest"].tolist() == [False, True, True]
    assert flagged["problems"].tolist() == [["all_zero", "fov_cut"], ["nonfinite"], ["fov_cut"]]
    table = report.problem_table(flagged, CORRUPT)
    assert table.to_dict("list") == {
        "problem": ["nonfinite", "all_zero", "fov_cut"],  # broken codes first, in CORRUPT order
        "dropped": ["yes", "yes", "no"],
        "images": [1, 1, 2],
        "in_manifest": [1, 0, 1],
    }
    plain = report.problem_table(report.flagged_images(index, metrics_frame()))
    assert "in_manifest" not in plain and plain["images"].sum() == 4
    none = report.flagged_images(index, metrics_frame().iloc[[3]], kept, CORRUPT)
    assert none.empty and report.problem_table(none, CORRUPT).empty


def test_checks_section_counts_and_no_table(tmp_path):
    index = make_index()
    manifest = index.loc[[1, 5, 7]]
    metrics = MetricsInput(metrics_frame(), "/m/metrics.parquet", CORRUPT)
    text = write_report(index, tmp_path / "a", manifest=manifest, metrics=metrics).read_text()
    assert "Automatic quality checks" in text
    assert "4 of 10 images measured, 3 images with a problem, 2 of them broken" in text
    assert "Broken images in the manifest: 1." in text
    row = "<tr><td>{}</td><td>{}</td>" + '<td class="num">{}</td><td class="num">{}</td></tr>'
    assert row.format("nonfinite", "yes", 1, 1) in text
    assert row.format("all_zero", "yes", 1, 0) in text
    assert row.format("fov_cut", "no", 2, 1) in text
    path1 = html.escape(index.loc[1, "path"])
    assert f"<tr><td>ds-a</td><td>{path1}</td><td>nonfinite</td><td>yes</td></tr>" in text
    path3 = html.escape(index.loc[3, "path"])
    assert f"<td>{path3}</td><td>all_zero, fov_cut</td><td>no</td></tr>" in text
    missing = MetricsInput(None, "/w/metrics/metrics.parquet", CORRUPT)
    text = write_report(index, tmp_path / "b", metrics=missing).read_text()
    assert "No metrics table was found (looked for /w/metrics/metrics.parquet)" in text
    assert "`curate metrics`" in text and "Flagged images per problem code" not in text


def test_flagged_list_is_capped(tmp_path, monkeypatch):
    from openmind_curate.report import page

    monkeypatch.setattr(page, "FLAGGED_SHOWN", 2)
    metrics = MetricsInput(metrics_frame(), "m.parquet", CORRUPT)
    text = write_report(make_index(), tmp_path, metrics=metrics).read_text()
    assert "2 shown)" in text and "... and 1 more flagged images." in text
    assert "<td>fov_cut</td></tr>" not in text  # img5, the third, is not listed


def _index_file(tmp_path: Path) -> Path:
    path = tmp_path / "index" / "images.parquet"
    with store.locked(path):
        store.write(path, index_table())
    return path


def test_cli_writes_the_page(tmp_path):
    index = _index_file(tmp_path)
    manifest = tmp_path / "manifest.parquet"
    store.read_frame(index).head(4).assign(split="train").to_parquet(manifest)
    iqs = tmp_path / "iqs.csv"
    pd.DataFrame({"image_id": ["img0", "img1"], "iqs": [1.0, 4.5]}).to_csv(iqs, index=False)
    out = tmp_path / "my report"
    args = [
        "report",
        "--index",
        str(index),
        "--iqs",
        str(iqs),
        "--manifest",
        str(manifest),
        "--out",
        str(out),
    ]
    result = runner.invoke(app, args, env=ENV)
    assert result.exit_code == 0, result.output
    page = out / "index.html"
    assert result.output.strip().splitlines()[-1] == str(page)
    text = page.read_text()
    assert "Manifest: 4 of 10 images kept" in text and str(iqs) in text
    assert '>unrated (no IQS)</td><td class="num">8</td>' in text


def test_cli_finds_the_metrics_beside_the_index(tmp_path):
    index = _index_file(tmp_path)
    metrics = tmp_path / "metrics" / "metrics.parquet"
    metrics.parent.mkdir()
    metrics_frame().to_parquet(metrics)
    args = ["report", "--index", str(index), "--out", str(tmp_path / "out")]
    result = runner.invoke(app, args, env=ENV)
    assert result.exit_code == 0, result.output
    text = (tmp_path / "out" / "index.html").read_text()
    assert "3 images with a problem, 2 of them broken" in text and str(metrics) in text
    other = tmp_path / "other.parquet"
    metrics_frame().iloc[[0]].to_parquet(other)  # img1: nonfinite only
    result = runner.invoke(app, [*args, "--metrics", str(other)], env=ENV)
    assert result.exit_code == 0, result.output
    text = (tmp_path / "out" / "index.html").read_text()
    assert "1 image with a problem, 1 of them broken" in text
    metrics.unlink()
    assert runner.invoke(app, args, env=ENV).exit_code == 0
    text = (tmp_path / "out" / "index.html").read_text()
    assert f"No metrics table was found (looked for {metrics})" in text


@pytest.mark.parametrize(
    ("option", "content", "message"),
    [
        ("--index", None, "no index at"),
        ("--iqs", None, "file not found"),
        ("--iqs", b"not parquet", "cannot read it as parquet"),
        ("--iqs", b"image_id,score\nimg0,2\n", "no column iqs"),
        ("--iqs", b"image_id,iqs\nimg0,7\n", "column 'iqs', row 0: value 7.0 is above 5"),
        ("--iqs", b"image_id,iqs\nimg0,good\n", "cannot read it as CSV"),
        ("--manifest", b"\x00garbage", "cannot read it as parquet"),
        ("--metrics", None, "file not found (make it with `curate metrics`"),
    ],
)
def test_cli_bad_input_names_the_file(tmp_path, option, content, message):
    index = _index_file(tmp_path)
    bad = tmp_path / ("bad.csv" if content and content.startswith(b"image_id") else "bad.parquet")
    if content is not None:
        bad.write_bytes(content)
    args = ["report", "--index", str(index), "--out", str(tmp_path / "out")]
    if option == "--index":
        args[2] = str(bad)
    else:
        args += [option, str(bad)]
    result = runner.invoke(app, args, env=ENV)
    assert result.exit_code == 2, result.output
    if option != "--index":  # a user's table: one shape, <what> <file>: <problem>
        what = {"--iqs": "IQS table", "--manifest": "manifest"}.get(option, option)
        assert f"{what} {bad}: " in result.output
    assert message in result.output and str(bad) in result.output
    assert "Traceback" not in result.output


def test_page_in_chromium(tmp_path, chromium):
    from playwright.sync_api import sync_playwright

    index = make_index()
    rng = np.random.default_rng(0)
    index["handedness"] = rng.choice(["R", "L"], len(index))
    index["weight"] = rng.normal(70, 10, len(index))
    manifest = index.head(6).assign(split="train")
    page_path = write_report(index, tmp_path / "report", manifest=manifest)
    with sync_playwright() as p:
        browser = p.chromium.launch(**chromium)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(page_path.as_uri())
            page.wait_for_load_state("load")
            images = page.evaluate(
                "Array.from(document.images).map(i => [i.getAttribute('src'), i.complete,"
                " i.naturalWidth])"
            )
            headings = page.evaluate(
                "Array.from(document.querySelectorAll('h1, h2')).map(h => h.textContent)"
            )
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    srcs = sorted(src for src, _, _ in images)
    assert srcs == ["cumulative.png", "iqs.png", "metadata.png", "modalities.png"]
    assert all(complete and width > 0 for _, complete, width in images), images
    assert list(headings) == list(HEADINGS)
    assert not errors, errors  # e.g. a Content-Security-Policy refusal
    assert shot.stat().st_size > 10_000
    if os.environ.get("REPORT_SCREENSHOT"):  # to look at it: REPORT_SCREENSHOT=/tmp/x.png
        shutil.copy(shot, os.environ["REPORT_SCREENSHOT"])


def test_builders_on_many_rows():
    """A vectorized builder run on many rows gives consistent totals."""
    rng = np.random.default_rng(1)
    n = 20_000
    index = pd.DataFrame(
        {
            "dataset_id": rng.choice([f"ds{i}" for i in range(50)], n),
            "modality": rng.choice(["T1w", "T2w", "FLAIR"], n),
            "subject": rng.integers(0, 30, n).astype(str),
        }
    )
    curve = report.cumulative_curve(index)
    assert curve["cumulative"].iloc[-1] == n and not math.isnan(curve["fraction"].iloc[-1])
    marks = report.cumulative_marks(curve)
    for f, k in marks.items():
        assert (
            curve["cumulative"].iloc[k - 1]
            >= f * n
            > (curve["cumulative"].iloc[k - 2] if k > 1 else -1)
        )
    assert report.modality_table(index)["images"].sum() == n
