"""Every command over a table of bad inputs: exit code 2, a message naming the
path and the problem, and no traceback. Unexpected errors: one line plus a log."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write_one_image_index
from typer.testing import CliRunner

from openmind_curate import cli
from openmind_curate import index as store
from openmind_curate.cli import app
from openmind_curate.schema import IMAGE_INDEX

runner = CliRunner()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Bad and good inputs, built once."""
    d = tmp_path_factory.mktemp("bad")
    text = d / "notparquet.parquet"
    text.write_text("not a table")
    metrics = d / "metrics.parquet"
    pq.write_table(pa.table({"image_id": ["a"], "snr": [1.0]}), metrics)
    good = write_one_image_index(d / "index" / "images.parquet", d / "ds")
    newer = d / "newer.parquet"
    meta = {store.META_KEY: json.dumps({"version": store.INDEX_VERSION + 1})}
    pq.write_table(pq.read_table(good).replace_schema_metadata(meta), newer)
    empty = d / "empty" / "images.parquet"
    with store.locked(empty):
        store.write(empty, IMAGE_INDEX.empty_table())
    (d / "empty_dir").mkdir()
    (d / "not_bids" / "photos").mkdir(parents=True)
    (d / "a_file.txt").write_text("x")
    return d


@pytest.fixture(scope="module")
def read_only(tmp_path_factory, files):
    """A folder nobody may write into, root included (an immutable folder),
    holding a valid index (so a stage can read it but not add to it)."""
    folder = tmp_path_factory.mktemp("ro") / "locked"
    folder.mkdir()
    shutil.copy(files / "index" / "images.parquet", folder / "images.parquet")
    if os.geteuid() == 0:
        if shutil.which("chattr") is None:
            pytest.skip("running as root without chattr: no way to make a folder read-only")
        done = subprocess.run(["chattr", "+i", str(folder)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"chattr +i refused here: {done.stderr.decode().strip()}")
        yield folder
        subprocess.run(["chattr", "-i", str(folder)], check=True)
    else:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)


def CASES(d: Path) -> list[tuple[list[str], str]]:
    good, file_ = str(d / "index" / "images.parquet"), str(d / "a_file.txt")
    cases = []
    for bad, message in [
        (d / "notparquet.parquet", "not a parquet file"),
        (d / "metrics.parquet", "not an image index: image_index: column 'dataset_id'"),
        (d, "a folder, not an index file"),
        (d / "missing.parquet", "no index at"),
        (d / "newer.parquet", "newer openmind-curate"),
        (d / "empty" / "images.parquet", "holds no images"),
    ]:
        cases += [
            (["masks", "--index", str(bad), "--out", str(d / "m")], message),
            (["metrics", "--index", str(bad), "--out", str(d / "m.parquet")], message),
            (["dwi", "--index", str(bad), "--out", str(d / "w")], message),
        ]
    cases += [
        (["index", "summary", str(d / "notparquet.parquet")], "not a parquet file"),
        (["index", "summary", str(d / "newer.parquet")], "newer openmind-curate"),
        # Outputs of the wrong kind, or that cannot be created.
        (["crawl", str(d / "empty_dir"), "--out", str(d)], "is a folder; give a file path"),
        (["metrics", "--index", good, "--out", str(d)], "is a folder; give a file path"),
        (["synth", file_], f"OUT {file_} is a file, not a folder"),
        (["masks", "--index", good, "--out", file_], f"--out {file_} is a file, not a folder"),
        (["dwi", "--index", good, "--out", file_], "is a file, not a folder"),
        (["demo", "--out", file_], "is a file, not a folder"),
        (["metrics", "--index", good, "--out", f"{file_}/m.parquet"], "a_file.txt is a file"),
        (["crawl", str(d / "empty_dir"), "--out", "/proc/x/images.parquet"], "cannot write"),
        # Inputs that are not what they should be.
        (["crawl", str(d / "empty_dir"), "--out", str(d / "i.parquet")], "no BIDS dataset under"),
        (["crawl", str(d / "not_bids"), "--out", str(d / "i.parquet")], "is this a BIDS dataset"),
        (["crawl", str(d / "nowhere"), "--out", str(d / "i.parquet")], "not a folder"),
        (["dwi", "/nonexistent/x_dwi.nii.gz", "--out", str(d / "w")], "file not found"),
        (["dwi", str(d), "--out", str(d / "w")], "is a folder, not a file"),
        (["synth", str(d / "s"), "--scheduler", "bogus"], "not a Dask scheduler address"),
        (
            ["masks", "--index", good, "--scheduler", "tcp://127.0.0.1:1"],
            "cannot reach the Dask scheduler at tcp://127.0.0.1:1",
        ),
    ]
    return cases


def test_every_command_rejects_bad_input_with_a_message(files):
    for args, message in CASES(files):
        result = runner.invoke(app, args, env={"COLUMNS": "300"})
        text = " ".join(result.output.split())
        assert result.exit_code == 2, (args, result.output, result.exception)
        assert message in text, (args, text)
        assert "Traceback" not in result.output and not isinstance(result.exception, Exception), (
            args
        )
    # Nothing was created for a refused input.
    assert not (files / "w").exists() and not (files / "i.parquet").exists()


def test_a_read_only_output_folder_is_refused_before_any_work(files, read_only):
    good = str(files / "index" / "images.parquet")
    locked_index = read_only / "images.parquet"
    for args in (
        ["masks", "--index", str(locked_index), "--out", str(files / "m2")],
        ["synth", str(read_only / "corpus")],
        ["masks", "--index", good, "--out", str(read_only)],
        ["metrics", "--index", good, "--out", str(read_only / "m.parquet")],
        ["crawl", str(files / "empty_dir"), "--out", str(read_only / "i.parquet")],
    ):
        result = runner.invoke(app, args, env={"COLUMNS": "300"})
        text = " ".join(result.output.split())
        assert result.exit_code == 2 and "cannot write" in text and str(read_only) in text, args
    assert [p.name for p in read_only.iterdir()] == ["images.parquet"]


def test_defaults_show_in_help():
    masks = runner.invoke(app, ["masks", "--help"], env={"COLUMNS": "200"}).output
    fetch = runner.invoke(app, ["fetch", "--help"], env={"COLUMNS": "200"}).output
    assert "[default: all cores]" in masks and "[default: the latest snapshot]" in fetch


def test_an_internal_error_prints_one_line_and_logs_the_traceback(monkeypatch, tmp_path, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("something inside broke")

    monkeypatch.setenv("OPENMIND_CURATE_LOGS", str(tmp_path / "logs"))
    monkeypatch.setattr(store, "read_frame", broken)
    monkeypatch.setattr(sys, "argv", ["curate", "index", "summary", str(tmp_path)])
    with pytest.raises(SystemExit) as stop:
        cli.run()
    assert stop.value.code == 1
    out = " ".join(capsys.readouterr().out.split())
    assert "internal error: RuntimeError: something inside broke" in out
    logs = list((tmp_path / "logs").iterdir())
    assert len(logs) == 1 and str(logs[0]) in out
    assert "Traceback" in logs[0].read_text() and "Traceback" not in out


def test_the_console_script_runs_through_the_guard():
    exe = Path(sys.executable).with_name("curate")
    done = subprocess.run(
        [exe, "index", "summary", "/nonexistent/images.parquet"], capture_output=True, text=True
    )
    assert done.returncode == 2 and "no index at /nonexistent/images.parquet" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr
