"""Every batch command on a real Dask cluster (scheduler and worker processes
started in another folder, on loopback) writes where the user asked."""

from __future__ import annotations

import importlib
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from dask.distributed import Client
from typer.testing import CliRunner

from openmind_curate import index as store
from openmind_curate import preflight
from openmind_curate.cli import app
from openmind_curate.preflight import InputError, workers_see

runner = CliRunner()


def _run(*args: str) -> str:
    result = runner.invoke(app, [*args, "-q"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, (args, result.output)
    return result.output


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def test_batch_commands_on_a_real_cluster_write_where_asked(dask_processes, tmp_path, monkeypatch):
    address, workers_home = dask_processes
    before = _files(workers_home)
    monkeypatch.chdir(tmp_path)  # relative paths, as a user would type them
    sched = ["--scheduler", address]
    _run(
        "synth",
        "--out",
        "corpus",
        "--n-datasets",
        "2",
        "--n-subjects",
        "1",
        "--voxel-scale",
        "3",
        *sched,
    )
    _run("crawl", "corpus", "--out", "index/images.parquet", *sched)
    _run(
        "dwi",
        "--index",
        "index/images.parquet",
        "--out",
        "deriv/dwi",
        "--denoise",
        "none",
        "--no-gibbs",
        "--no-motion",
        "--no-bias",
        *sched,
    )
    _run("masks", "--index", "index/images.parquet", "--out", "deriv/masks", *sched)
    _run("metrics", "--index", "index/images.parquet", "--out", "m/metrics.parquet", *sched)

    frame = store.read_frame(tmp_path / "index" / "images.parquet")
    n_maps = int(frame["derived_from"].notna().sum())
    assert n_maps >= 3 and frame["anat_mask_path"].notna().sum() >= len(frame) - 4
    for path in frame["anat_mask_path"].dropna():
        assert Path(path).is_file() and str(tmp_path) in path
    metrics = pq.read_table(tmp_path / "m" / "metrics.parquet")
    assert metrics.num_rows == len(frame)
    # Nothing landed in the folder the workers were started in.
    assert _files(workers_home) == before


def test_workers_that_cannot_see_the_output_folder_are_refused(dask_processes, tmp_path):
    address, _ = dask_processes
    workers_see(address, tmp_path)  # a shared folder: passes
    # Workers on other machines without the folder: their check says no.
    # Lambdas travel by value (the workers cannot import this test module).
    with Client(address) as client:
        client.run(lambda: setattr(preflight, "_exists", lambda path: False))
        try:
            with pytest.raises(InputError, match="2 of 2 Dask workers .* cannot see"):
                workers_see(address, tmp_path)
            result = runner.invoke(
                app,
                ["synth", "--out", str(tmp_path / "c"), "--scheduler", address],
                env={"COLUMNS": "300"},
            )
            assert result.exit_code == 2 and "cannot see" in result.output, result.output
        finally:
            client.run(lambda: importlib.reload(preflight))


def _listening(pids: list[int]) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket these processes listen on."""
    import psutil

    found = set()
    for pid in pids:
        try:
            conns = psutil.Process(pid).net_connections(kind="tcp")
        except psutil.Error:  # a process that ended meanwhile
            continue
        found |= {(c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN}
    return found


def test_the_suites_clusters_listen_on_loopback_and_free_ports(dask_cluster, dask_processes):
    """Both test clusters (a LocalCluster, and scheduler and worker processes)
    reachable from this machine only, and never on Dask's default HTTP port
    8787, where another cluster on the machine would clash with them."""
    import os

    import psutil

    me = psutil.Process()
    pids = [os.getpid(), *(p.pid for p in me.children(recursive=True))]
    sockets = _listening(pids)
    ports = {port for _, port in sockets}
    assert dask_cluster.scheduler.port in ports  # the LocalCluster's scheduler is among them
    assert int(dask_processes[0].rsplit(":", 1)[1]) in ports  # so is `dask scheduler`
    assert {ip for ip, _ in sockets} <= {"127.0.0.1", "::1"}, sockets
    assert 8787 not in ports, sockets


def test_scheduler_local_serves_on_loopback_and_a_free_port():
    """`--scheduler local` starts a private cluster: it listens on loopback
    only and takes no fixed port (8787 may belong to someone else)."""
    import threading
    import time

    import psutil

    from openmind_curate.jobs import JobOptions, run_batch

    seen: set[tuple[str, int]] = set()
    done = threading.Event()

    def watch() -> None:
        me = psutil.Process()
        while not done.is_set():
            for proc in [me, *me.children(recursive=True)]:
                try:
                    for c in proc.net_connections(kind="inet"):
                        if c.status == psutil.CONN_LISTEN:
                            seen.add((c.laddr.ip, c.laddr.port))
                except psutil.Error:
                    pass
            time.sleep(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        run_batch(time.sleep, [1.0, 1.0], JobOptions(workers=2, scheduler="local", progress=False))
    finally:
        done.set()
        thread.join()
    assert seen, "no listening socket seen while the cluster ran"
    assert all(ip in ("127.0.0.1", "::1") for ip, _ in seen), seen
    assert all(port != 8787 for _, port in seen), seen
