"""Shared fixtures: the generated corpus (built once per test session)."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from openmind_curate import index as store
from openmind_curate.cli import app
from openmind_curate.jobs import JobOptions
from openmind_curate.synth import SynthConfig, generate

REPO = Path(__file__).resolve().parents[1]
BIDS_EXAMPLES = REPO.parent / "shared" / "testdata" / "bids-examples"


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    """The default-size generated corpus and its truth table."""
    root = tmp_path_factory.mktemp("corpus")
    truth, result = generate(root, SynthConfig(), JobOptions(workers=2, progress=False))
    assert result.ok, result.summary()
    return root, truth.to_pandas()


@pytest.fixture(scope="session")
def bids_examples() -> Path:
    if not BIDS_EXAMPLES.is_dir():
        pytest.skip(f"bids-examples not present at {BIDS_EXAMPLES} (only in the CI workplace)")
    return BIDS_EXAMPLES


@pytest.fixture(autouse=True)
def _single_blas_thread(monkeypatch):
    # Two cores: keep BLAS from oversubscribing next to the worker pools.
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))


@pytest.fixture(scope="session")
def dask_cluster():
    """A real two-worker Dask LocalCluster (processes, one thread each)."""
    from dask.distributed import LocalCluster

    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    )
    yield cluster
    cluster.close()


@pytest.fixture(scope="session")
def dask_processes(tmp_path_factory):
    """A real cluster as a user starts one: `dask scheduler` and `dask worker`
    processes on loopback, started in a folder of their own (once per run)."""
    import socket
    import subprocess
    import sys
    import time

    from dask.distributed import Client

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    cwd = tmp_path_factory.mktemp("dask-workers-home")
    dask = str(Path(sys.executable).with_name("dask"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    scheduler = [dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"]
    procs = [subprocess.Popen(scheduler, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)]  # fmt: skip
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError("dask scheduler did not start") from None
            time.sleep(0.2)
    worker = [dask, "worker", address, "--nworkers", "2", "--nthreads", "1", "--no-dashboard"]
    quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs.append(subprocess.Popen(worker, cwd=cwd, env=env, **quiet))
    try:
        with Client(address, timeout=30) as client:
            client.wait_for_workers(2, timeout=60)
        yield address, cwd
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.fixture(scope="session")
def masked(corpus, tmp_path_factory):
    """The corpus crawled, then `curate masks` run on its index (once)."""
    root, truth = corpus
    work = tmp_path_factory.mktemp("masks")
    index = work / "index" / "images.parquet"
    out = work / "derivatives" / "masks"
    crawled = CliRunner().invoke(app, ["crawl", str(root), "--out", str(index), "-j", "2", "-q"])
    assert crawled.exit_code == 0, crawled.output
    result = CliRunner().invoke(app, ["masks", "--index", str(index), "--out", str(out), "-j", "2",
                                 "-q"], env={"COLUMNS": "200"})  # fmt: skip
    assert result.exit_code == 0, result.output
    table = store.read_frame(index)  # mask paths made absolute
    images = truth[(truth["kind"] == "image") & truth["anat_mask_truth"].notna()]
    rows = images.merge(table[["image_id", "anat_mask_path", "anon_mask_path",
                               "is_brain_extracted"]], on="image_id",
                        suffixes=("_truth", ""))  # fmt: skip
    return root, rows, index, out, result.output
