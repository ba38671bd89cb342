"""Ctrl-C and SIGTERM through the real `curate` command, on real stages:
masks on the local pool and on a Dask LocalCluster (the case that once hung),
and dwi, whose items take far longer than the 5 s the command may take."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from openmind_curate.cli import app

CURATE = str(Path(sys.executable).with_name("curate"))


#: The datasets whose images the masks tests keep (12 of them): enough that
#: a run is still busy when two are done, few enough that the resume is cheap.
MASK_DATASETS = ("ds900001", "ds900002")


@pytest.fixture(scope="module")
def index(corpus, tmp_path_factory):
    """The corpus crawled, then cut to the images of `MASK_DATASETS` and every
    DWI series (the dwi test's 3 items): the resumed masks run redoes what was
    left, which on the whole corpus cost 20-30 s a test."""
    from openmind_curate import index as store

    root, _ = corpus
    path = tmp_path_factory.mktemp("interrupt") / "index" / "images.parquet"
    result = CliRunner().invoke(app, ["crawl", str(root), "--out", str(path), "-q"])
    assert result.exit_code == 0, result.output
    table = store.read(path)
    frame = table.select(["dataset_id", "modality"]).to_pandas()
    keep = frame["dataset_id"].isin(MASK_DATASETS) | (frame["modality"] == "DWI")
    with store.locked(path):
        store.write(path, table.filter(pa.array(keep.to_numpy())))
    return path


def _started(folder: Path, pattern: str, proc: subprocess.Popen, n: int = 1) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if folder.exists() and len(list(folder.rglob(pattern))) >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(f"ended before the signal: {proc.communicate()}")
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError(f"no {pattern} appeared under {folder}")


def _working(proc: subprocess.Popen, cpu_s: float = 2.0) -> None:
    """Wait until a worker of the command has spent `cpu_s` CPU-seconds: it is
    inside an item, not starting up (a forked pool worker starts with the
    parent's imports and costs next to nothing). CPU time, not wall time, so
    a loaded machine only makes the wait longer."""
    import psutil

    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"ended before the signal: {proc.communicate()}")
        busy = 0.0
        for child in psutil.Process(proc.pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):  # a child may end meanwhile
                t = child.cpu_times()
                busy = max(busy, t.user + t.system)
        if busy >= cpu_s:
            return
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError(f"no worker of the command spent {cpu_s} CPU-seconds")


def _stop(proc: subprocess.Popen, sig: int, group: bool) -> tuple[float, str]:
    sent = time.monotonic()
    (os.killpg if group else os.kill)(proc.pid, sig)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return time.monotonic() - sent, out + err


def _popen(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [CURATE, *args, "-q"],
        start_new_session=True,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


@pytest.mark.parametrize(
    ("scheduler", "sig", "group"),
    [(None, signal.SIGINT, True), ("local", signal.SIGINT, False)],
    ids=["pool-ctrl-c", "dask-sigint"],
)
def test_masks_stop_at_once_and_resume(index, tmp_path, scheduler, sig, group):
    out = tmp_path / "masks"
    extra = ["--scheduler", scheduler] if scheduler else []
    proc = _popen(["masks", "--index", str(index), "--out", str(out), "-j", "2", *extra])
    _started(out, "*Anatomy_mask.json", proc, n=2)
    seconds, text = _stop(proc, sig, group)
    assert proc.returncode == 130, text
    assert seconds < 5.0, f"took {seconds:.1f} s to stop"
    assert "Interrupted (SIGINT)" in text and "run the same command again" in text
    assert "Traceback" not in text
    done = len(list(out.rglob("*Anatomy_mask.json")))
    again = subprocess.run(
        [CURATE, "masks", "--index", str(index), "--out", str(out), "-q", "-j", "2"],
        capture_output=True,
        text=True,
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"{done} skipped" in again.stdout
    for record in out.rglob("*Anatomy_mask.json"):
        assert json.loads(record.read_text())["options_hash"]


def test_dwi_stops_within_seconds_on_sigterm(index, tmp_path):
    out = tmp_path / "dwi"
    proc = _popen(["dwi", "--index", str(index), "--out", str(out), "-j", "1"])
    _started(out, "dwi", proc)  # output folders are made just before the batch starts
    _working(proc)  # the first series is now in its pipeline (25-50 s per item)
    seconds, text = _stop(proc, signal.SIGTERM, group=False)
    assert proc.returncode == 143, text
    assert seconds < 5.0, f"took {seconds:.1f} s to stop"
    assert "Interrupted (SIGTERM): 0 of 3 items finished" in text and "Traceback" not in text
    assert not list(out.rglob("*_desc-pipeline_dwi.json"))
