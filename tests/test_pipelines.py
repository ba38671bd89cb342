"""The SLURM set-up in pipelines/: the job script its config renders, the
launcher's command checks, and one real run through the launcher on a Dask
LocalCluster standing in for SLURM (no SLURM here)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from dask_jobqueue import SLURMCluster

from openmind_curate import slurm
from openmind_curate.slurm import SlurmConfig, cluster_kwargs, launch, load_config

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"


def _render(cfg: SlurmConfig, venv: str, workdir: Path) -> str:
    kwargs = cluster_kwargs(cfg, venv=venv, workdir=str(workdir))
    with SLURMCluster(**kwargs, scheduler_options={"dashboard_address": ":0"}) as cluster:
        return cluster.job_script()


def test_shipped_config_renders_a_complete_job_script(tmp_path):
    cfg = load_config(PIPELINES / "slurm.yaml")
    cfg = dataclasses.replace(cfg, partition="cpu", account="mylab", env={"A_VAR": "a b"})
    script = _render(cfg, "/shared/venv", tmp_path)
    lines = script.splitlines()
    for directive in (
        "-J curate-worker",
        "-n 1",
        f"--cpus-per-task={cfg.cores}",
        "--mem=32G",
        "-t 04:00:00",
        "-p cpu",
        "-A mylab",
        f"-o {tmp_path}/slurm-logs/curate-worker-%J.out",
    ):
        assert f"#SBATCH {directive}" in lines, directive
    assert (tmp_path / "slurm-logs").is_dir()
    worker = next(i for i, line in enumerate(lines) if "distributed.cli.dask_worker" in line)
    prologue = lines[:worker]
    assert "source /shared/venv/bin/activate" in prologue
    for var in (
        "OMP_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "MKL_NUM_THREADS",
        "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS",
    ):
        assert f"export {var}=1" in prologue, var
    assert "export A_VAR='a b'" in prologue
    assert f"cd {tmp_path}" in prologue
    cmd = lines[worker]
    assert re.search(r"--nthreads 1(\s|$)", cmd)
    assert f"--nworkers {cfg.cores}" in cmd
    assert "--memory-limit 4.00GiB" in cmd  # 32 GiB over 8 workers
    assert "--lifetime 3h45m" in cmd


def test_config_file_is_validated(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("cores: 4\nmemory: 16GiB\npartition: short\nthreads: 2\n")
    with pytest.raises(ValueError, match=r"unknown SLURM config keys \['threads'\]"):
        load_config(path)
    path.write_text("cores: 4\nmemory: 16GiB\npartition: short\n")
    cfg = load_config(path)
    assert (cfg.cores, cfg.memory, cfg.partition) == (4, "16GiB", "short")
    kw = cluster_kwargs(cfg, venv="/v", workdir="/w")
    assert kw["processes"] == kw["cores"] == 4 and kw["queue"] == "short"
    assert kw["worker_extra_args"] == []  # no lifetime configured


def test_launcher_builds_and_refuses_commands(capsys):
    assert {"synth", "crawl", "dwi", "masks", "metrics"} <= slurm.batch_commands()
    assert "fetch" not in slurm.batch_commands()
    argv = ["curate", "dwi", "--index", "index/images.parquet", "--out", "derivatives/dwi"]
    addr = "tcp://head:8786"
    assert slurm.with_scheduler(argv, addr) == [*argv, "--scheduler", addr]
    with pytest.raises(ValueError, match="expected a `curate` command"):
        slurm.with_scheduler(["python", "-c", "1"], "tcp://h:1")
    with pytest.raises(ValueError, match="`curate fetch` is not a batch command.*dwi"):
        slurm.with_scheduler(["curate", "fetch", "ds000001"], "tcp://h:1")
    with pytest.raises(ValueError, match="not a batch command"):
        slurm.with_scheduler(["curate"], "tcp://h:1")
    with pytest.raises(ValueError, match="leave out --scheduler"):
        slurm.with_scheduler([*argv, "--scheduler=local"], "tcp://h:1")
    assert slurm.main(["--jobs", "2", "--", "curate", "rate"]) == 2
    assert "`curate rate` is not a batch command" in capsys.readouterr().err
    assert slurm.main(["--jobs", "2"]) == 2
    assert "give the curate command after --" in capsys.readouterr().err
    assert slurm.main(["--jobs", "0", "--", "curate", "dwi"]) == 2
    assert "--jobs must be at least 1" in capsys.readouterr().err


def test_dry_run_prints_the_job_script_and_submits_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    config = PIPELINES / "slurm.yaml"
    args = ["--config", str(config), "--dry-run", "--", "curate", "masks", "--index", "i.parquet"]
    assert slurm.main(args) == 0
    out = capsys.readouterr().out
    assert "#SBATCH --cpus-per-task=8" in out and "distributed.cli.dask_worker" in out
    assert re.search(r"# then: curate masks --index i.parquet --scheduler tcp://\S+:\d+", out)


class FakeCluster:
    scheduler_address = "tcp://fake:1"

    def __init__(self) -> None:
        self.calls: list[str] = []

    def scale(self, n: int) -> None:
        self.calls.append(f"scale {n}")

    def close(self) -> None:
        self.calls.append("close")


def test_launcher_closes_the_cluster_on_interrupt_and_never_starts_one_for_a_bad_command():
    fake = FakeCluster()

    def interrupted(argv):
        assert argv[-2:] == ["--scheduler", "tcp://fake:1"]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        launch(
            ["curate", "crawl", "x"],
            SlurmConfig(),
            3,
            cluster_factory=lambda c, n: fake,
            run=interrupted,
            log=lambda s: None,
        )
    assert fake.calls == ["scale 0", "close"]

    def no_cluster(cfg, n):
        raise AssertionError("a cluster was started for a refused command")

    with pytest.raises(ValueError, match="not a batch command"):
        launch(["curate", "iqs"], SlurmConfig(), 1, cluster_factory=no_cluster)


def test_launcher_runs_synth_end_to_end_on_a_dask_cluster(tmp_path):
    from dask.distributed import LocalCluster

    started: list[LocalCluster] = []

    def local_cluster(cfg: SlurmConfig, n_jobs: int) -> LocalCluster:
        cluster = LocalCluster(
            n_workers=n_jobs, threads_per_worker=1, processes=True, dashboard_address=":0"
        )
        started.append(cluster)
        return cluster

    def run_and_check(argv):
        code = slurm.run_curate(argv)
        # The items ran as tasks on this cluster's scheduler, not in a local pool.
        assert "call_item" in started[0].scheduler.task_prefixes
        return code

    out = tmp_path / "corpus"
    command = [
        "curate",
        "synth",
        "--out",
        str(out),
        "--n-datasets",
        "1",
        "--n-subjects",
        "1",
        "--voxel-scale",
        "3",
        "--quiet",
    ]
    code = launch(
        command,
        SlurmConfig(),
        2,
        cluster_factory=local_cluster,
        run=run_and_check,
        log=lambda s: None,
    )
    assert code == 0
    assert (out / "truth" / "images.parquet").is_file()
    assert len(list(out.glob("ds900001/sub-*/**/*.nii.gz"))) > 0
    assert started[0].status.name == "closed"


@pytest.mark.parametrize("entry", ["script", "module"])
def test_the_job_files_wrapper_and_the_module_run_the_same_launcher(entry):
    """pipelines/slurm.py is only a wrapper; `python -m openmind_curate.slurm`
    is the same launcher without the folder."""
    import subprocess
    import sys

    head = [str(PIPELINES / "slurm.py")] if entry == "script" else ["-m", "openmind_curate.slurm"]
    args = [sys.executable, *head, "--jobs", "1", "--", "curate", "rate"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "`curate rate` is not a batch command" in proc.stderr
