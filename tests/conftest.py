"""Shared fixtures: the generated corpus (built once per test session)."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from openmind_curate import index as store
from openmind_curate.cli import app
from openmind_curate.jobs import JobOptions
from openmind_curate.synth import SynthConfig, generate

# nnU-Net reads its process count once, at import: one process for the test runs
os.environ.setdefault("nnUNet_def_n_proc", "1")

REPO = Path(__file__).resolve().parents[1]
BIDS_EXAMPLES = REPO.parent / "shared" / "testdata" / "bids-examples"
#: Where the test servers' HTTP endpoints listen: loopback, a port the OS picks.
LOOPBACK_FREE_PORT = "127.0.0.1:0"


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    """The default-size generated corpus and its truth table."""
    root = tmp_path_factory.mktemp("corpus")
    truth, result = generate(root, SynthConfig(), JobOptions(workers=2, progress=False))
    assert result.ok, result.summary()
    return root, truth.to_pandas()


@pytest.fixture(scope="session")
def corpus_index(corpus, tmp_path_factory) -> Path:
    """The corpus crawled once per run. Read it only: a test that writes gets
    its own copy from `private_index`."""
    root, _ = corpus
    index = tmp_path_factory.mktemp("corpus-index") / "index" / "images.parquet"
    result = CliRunner().invoke(app, ["crawl", str(root), "--out", str(index), "-j", "2", "-q"])
    assert result.exit_code == 0, result.output
    return index


@pytest.fixture
def private_index(corpus_index, tmp_path) -> Path:
    """A writable copy of the crawled corpus's index (stored paths rebased on
    the copy's folder), so a ratings.sqlite or scores land beside it."""
    work = tmp_path / "images.parquet"
    with store.locked(work):
        store.write(work, store.read(corpus_index))
    return work


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
    """A real two-worker Dask LocalCluster (processes, one thread each), on
    loopback. A scheduler always serves HTTP (health and metrics routes);
    `dashboard_address=None` would put that on port 8787, where any other
    cluster on the machine clashes with it, so it takes a free port."""
    from dask.distributed import LocalCluster

    cluster = LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=LOOPBACK_FREE_PORT,
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
    # --no-dashboard keeps bokeh off, yet scheduler and workers still serve HTTP
    # (health, metrics): on loopback and a free port too, never 0.0.0.0:8787.
    http = ["--no-dashboard", "--dashboard-address", LOOPBACK_FREE_PORT]
    scheduler = [dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), *http]
    procs = [
        subprocess.Popen(
            scheduler, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
    ]
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError("dask scheduler did not start") from None
            time.sleep(0.2)
    worker = [dask, "worker", address, "--host", "127.0.0.1", "--nworkers", "2", "--nthreads", "1"]
    worker += http
    quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs.append(subprocess.Popen(worker, cwd=cwd, env=env, **quiet))
    try:
        with Client(address, timeout=30) as client:
            client.wait_for_workers(2, timeout=60)
        yield address, cwd
    finally:
        # Workers first, each waited for, while their scheduler still answers:
        # a worker whose scheduler is gone retries it before it exits (8 s).
        for p in reversed(procs):
            p.terminate()
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
    result = CliRunner().invoke(
        app,
        ["masks", "--index", str(index), "--out", str(out), "-j", "2", "-q"],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    table = store.read_frame(index)  # mask paths made absolute
    images = truth[(truth["kind"] == "image") & truth["anat_mask_truth"].notna()]
    rows = images.merge(
        table[["image_id", "anat_mask_path", "anon_mask_path", "is_brain_extracted"]],
        on="image_id",
        suffixes=("_truth", ""),
    )
    return root, rows, index, out, result.output


# --- a throw-away PostgreSQL server (the shared ratings store's other backend) -------------


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL server started once per run (tests/pgserver.py); yields its
    base URL ``postgresql://postgres@127.0.0.1:<port>`` (no database). Skips
    only when no server binaries exist; a server that fails to start is an
    error that quotes its log."""
    from pgserver import NoPostgres, ThrowawayPostgres

    try:
        server = ThrowawayPostgres()
    except NoPostgres as exc:
        pytest.skip(str(exc))
    try:
        yield server.start()
    finally:  # also after a failed or timed-out start
        server.remove()


def _create_database(server: str, name: str) -> str:
    from pgserver import create_database

    return create_database(server, name)


@pytest.fixture(scope="session")
def postgres_url(postgres_server) -> str:
    """``postgresql://postgres@127.0.0.1:<port>/openmind_test``: one database on the
    session's throw-away server, shared by every test that asks for it."""
    return _create_database(postgres_server, "openmind_test")


_db_count = itertools.count(1)


@pytest.fixture
def postgres_db_url(postgres_server) -> str:
    """``postgresql://postgres@127.0.0.1:<port>/test_<n>``: a fresh, empty database
    on the session's server for this test alone."""
    return _create_database(postgres_server, f"test_{next(_db_count)}")


# --- Debian's chromium, driven by Playwright (the rater app's and the report's browser tests) --

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="session")
def chromium() -> dict:
    """Playwright's launch arguments for Debian's chromium, headless and as root
    (`playwright install` cannot download browsers here). The background
    networking flags keep it from calling out through a closed network."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (Debian package `chromium`; .ci/run installs it)")
    pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    args = [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
    ]
    return {"executable_path": CHROMIUM, "args": args}


def write_one_image_index(path: Path, root: Path) -> Path:
    """A valid one-image index at `path` (the image under `root` need not
    exist: a command's checks come before any read). Returns `path`."""
    from openmind_curate import index as store
    from openmind_curate.schema import IMAGE_INDEX, rows_to_table

    row = dict(
        image_id="a",
        dataset_id="ds",
        suffix="T1w",
        extension=".nii.gz",
        modality="T1w",
        is_derivative=False,
        root=str(root),
        path="sub-01/anat/sub-01_T1w.nii.gz",
        size_bytes=1,
        header_status="ok",
    )
    with store.locked(path):
        store.write(path, rows_to_table([row], IMAGE_INDEX))
    return path
