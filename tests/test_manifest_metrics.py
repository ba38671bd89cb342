"""`curate build-manifest` keeps broken images out: the metrics step.

Known answers on the hand-built index of `test_manifest` with a metrics table
written by hand, then once on the generated corpus, whose NaN-filled and
all-zero T1w volumes (ds900004) have header status "ok" and are found by the
real `curate metrics`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_manifest import ENV, make_index, runner
from typer.testing import CliRunner

from openmind_curate import index as store
from openmind_curate.cli import app
from openmind_curate.errors import InputError
from openmind_curate.manifest import build as B
from openmind_curate.manifest import corruption
from openmind_curate.manifest import filters as F
from openmind_curate.manifest.writers import sidecar_path

#: The hand-built index keeps a1 a2 a3 b2 b3 c1 c2 by default (b1: header
#: "corrupt", a4: 4D). Problems per image; c2 has no metrics row.
PROBLEMS = {
    "a1": ["nonfinite"],
    "a2": ["all_zero"],
    "a3": ["fov_cut"],
    "b1": ["unreadable"],
    "b2": ["spacing", "constant_slices"],
    "b3": [],
    "c1": [],
}
DEFAULT = {"a1", "a2", "a3", "b2", "b3", "c1", "c2"}


@pytest.fixture
def work(tmp_path) -> Path:
    make_index(tmp_path)
    return tmp_path


def write_metrics(path: Path, problems=PROBLEMS, stamps: dict[str, int] | None = None) -> Path:
    """A metrics table with the columns the manifest reads (and a few more)."""
    ids = list(problems)
    columns = {
        "image_id": ids,
        "dataset_id": ["ds"] * len(ids),
        "problems": pa.array([problems[i] for i in ids], pa.list_(pa.string())),
        "corrupted": [bool(problems[i]) for i in ids],
    }
    if stamps is not None:
        columns["source_mtime_ns"] = pa.array([stamps.get(i) for i in ids], pa.int64())
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return path


def _build(work: Path, metrics_file=None, **filters) -> B.BuildResult:
    index = work / "index" / "images.parquet"
    out = work / "manifests" / "m.parquet"
    return B.build(index, F.Filters(**filters), out, command=[], metrics_file=metrics_file)


def _ids(result: B.BuildResult) -> set[str]:
    return set(result.table.column("image_id").to_pylist())


def _file(work: Path, image_id: str) -> str:
    row = store.read_frame(work / "index" / "images.parquet").set_index("image_id").loc[image_id]
    return os.path.join(row["root"], row["path"])


def test_default_table_beside_the_index_drops_the_corrupt_images(work):
    write_metrics(work / "metrics" / "metrics.parquet")
    result = _build(work)
    assert _ids(result) == DEFAULT - {"a1", "a2"}  # fov_cut, spacing, constant_slices kept
    side = json.loads(sidecar_path(result.out).read_text())
    step = side["steps"][-1]
    assert (step["filter"], step["before"], step["after"], step["dropped"]) == ("metrics", 7, 5, 2)
    assert step["by_problem"] == {"nonfinite": 1, "all_zero": 1}
    assert step["flagged_images"] == ["a1", "a2"] and step["flagged_dropped"] == 2
    assert (step["unchecked"], step["no_metrics_row"], step["stale"]) == (1, 1, 0)
    assert step["unchecked_dropped"] == 0
    assert side["metrics_check"]["flagged"] == 2
    assert side["inputs"]["metrics"]["path"] == str(work / "metrics" / "metrics.parquet")
    assert side["inputs"]["metrics"]["found"].startswith("default")
    assert side["filters"]["keep_flagged"] is False


def test_keep_flagged_and_require_metrics(work):
    table = write_metrics(work / "elsewhere.parquet")
    kept = _build(work, table, keep_flagged=True)
    assert _ids(kept) == DEFAULT
    assert kept.steps[-1].detail["flagged"] == 2 and kept.steps[-1].detail["flagged_dropped"] == 0
    strict = _build(work, table, require_metrics=True)
    assert _ids(strict) == DEFAULT - {"a1", "a2", "c2"}
    assert strict.steps[-1].detail["unchecked_dropped"] == 1
    assert B.default_name(F.Filters(keep_flagged=True, require_metrics=True)) == (
        "with-flagged_checked.parquet"
    )


def test_a_row_older_than_its_file_is_unchecked(work):
    """By the row's own stamp, and by the table's mtime for a table without one."""
    now = {i: os.stat(_file(work, i)).st_mtime_ns for i in ("a1", "a2")}
    table = write_metrics(work / "m1.parquet", stamps={"a1": now["a1"], "a2": now["a2"] - 1})
    result = _build(work, table)
    assert _ids(result) == DEFAULT - {"a1"}  # a2 changed since it was measured
    detail = result.steps[-1].detail
    assert (detail["stale"], detail["unchecked"], detail["flagged_images"]) == (1, 2, ["a1"])
    plain = write_metrics(work / "m2.parquet")
    later = os.stat(plain).st_mtime_ns + 10**9
    os.utime(_file(work, "a1"), ns=(later, later))
    assert _ids(_build(work, plain)) == DEFAULT - {"a2"}
    assert _ids(_build(work, plain, require_metrics=True)) == DEFAULT - {"a1", "a2", "c2"}


def test_no_table_checks_nothing_and_says_so(work):
    result = _build(work)
    assert _ids(result) == DEFAULT and [s.name for s in result.steps][-1] != "metrics"
    check = result.sidecar_data["metrics_check"]
    assert check["metrics"] is None and check["unchecked"] == 7
    assert check["looked_for"] == str(work / "metrics" / "metrics.parquet")
    assert result.sidecar_data["inputs"]["metrics"] is None
    with pytest.raises(
        InputError, match="--require-metrics: no metrics table at .*metrics.parquet"
    ):
        _build(work, require_metrics=True)
    index, out = work / "index" / "images.parquet", work / "cli.parquet"
    said = runner.invoke(app, ["build-manifest", "--index", str(index), "-o", str(out)], env=ENV)
    assert said.exit_code == 0 and "no metrics table at" in said.output, said.output


def test_a_bad_metrics_table_names_the_file(work):
    bad = work / "bad.parquet"
    pq.write_table(pa.table({"image_id": ["a1"]}), bad)
    with pytest.raises(InputError, match=r"--metrics .*bad.parquet: no column problems"):
        _build(work, bad)
    with pytest.raises(InputError, match=r"--metrics .*missing.parquet: file not found"):
        _build(work, work / "missing.parquet")
    assert not (work / "manifests").exists()  # refused before any output


def test_the_generated_corpus_nan_and_zero_volumes_stay_out(corpus, corpus_index, tmp_path):
    """The issue's case: header "ok", flagged by the real `curate metrics`,
    dropped by the default build and counted by problem code."""
    _, truth = corpus
    t1w = truth[(truth["dataset_id"] == "ds900004") & (truth["suffix"] == "T1w")]
    t1w = t1w[t1w["kind"] == "image"]
    broken = set(t1w.loc[t1w["corruption"].isin(["nan", "zeros"]), "image_id"])
    cut = set(t1w.loc[t1w["fov_crop"] > 0, "image_id"])
    assert len(broken) == 2 and len(cut) == 1
    # measure only those three (seconds), through the real command
    index = store.read(corpus_index)
    few = index.filter(pa.array([i in broken | cut for i in index.column("image_id").to_pylist()]))
    sub = tmp_path / "few" / "images.parquet"
    with store.locked(sub):
        store.write(sub, few)
    metrics = tmp_path / "metrics.parquet"
    done = CliRunner().invoke(app, ["metrics", "--index", str(sub), "-o", str(metrics), "-q"])
    assert done.exit_code == 0, done.output
    assert pq.read_table(metrics).column("source_mtime_ns").null_count == 0  # each row's stamp
    out = tmp_path / "m.parquet"
    result = runner.invoke(
        app,
        ["build-manifest", "--index", str(corpus_index), "--metrics", str(metrics), "-o", str(out)],
        env=ENV,
    )
    assert result.exit_code == 0, result.output
    assert "2 flagged images" in result.output and "dropped" in result.output
    kept = set(pq.read_table(out, columns=["image_id"]).column("image_id").to_pylist())
    assert not broken & kept and cut <= kept
    step = json.loads(sidecar_path(out).read_text())["steps"][-1]
    assert step["filter"] == "metrics" and step["dropped"] == 2
    assert set(step["flagged_images"]) == broken
    assert {"nonfinite", "all_zero"} <= set(step["by_problem"])
    assert step["no_metrics_row"] == step["unchecked"] == step["before"] - 3
    assert corruption.CORRUPT == ("unreadable", "nonfinite", "all_zero", "constant")
