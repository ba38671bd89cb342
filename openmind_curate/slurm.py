"""Run a `curate` batch command on SLURM through dask-jobqueue.

The batch commands already run on any Dask scheduler (``--scheduler ADDR``);
this module only starts that scheduler with workers submitted as SLURM jobs,
runs the command against it, and cancels the jobs at the end, also on an
error, Ctrl-C or SIGTERM. Each worker is one single-threaded process per core
(the runner maps one item per process, and BLAS/ITK threads would only
oversubscribe the node), so the job script exports the thread limits.

The workers import `openmind_curate` and open the command's paths themselves:
every node needs the same environment and the same paths (a shared file
system). The launcher's working folder becomes the jobs' working folder, so
relative paths in the command mean the same on every node.

    python -m openmind_curate.slurm --config slurm.yaml --jobs 4 -- curate dwi --index ...
    python pipelines/slurm.py --jobs 4 -- curate dwi ...   (pipelines/slurm.yaml by default)

This module is the top floor of the package: it runs the command line in a
child process and reads the CLI's command list, and nothing in the package
imports it (tests/test_architecture.py holds that).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import yaml

from openmind_curate.errors import CurateError, InputError

#: Exported in every job script: one thread per worker process.
THREAD_LIMITS: dict[str, str] = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "NUMEXPR_NUM_THREADS": "1",
    "VECLIB_MAXIMUM_THREADS": "1",
    "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": "1",  # SimpleITK and ANTs
}


@dataclass(frozen=True)
class SlurmConfig:
    """One SLURM job's resources and set-up; each job runs `cores` workers."""

    cores: int = 8
    """CPUs per job; the job runs this many single-threaded worker processes."""
    memory: str = "32GiB"
    """Memory per job, shared evenly by its workers (Dask's worker memory limit)."""
    walltime: str = "04:00:00"
    partition: str | None = None
    account: str | None = None
    activate: str = "source {venv}/bin/activate"
    """Shell line that activates the environment on the node; ``{venv}`` is the
    launcher's own environment (``sys.prefix``), which must sit on the shared
    file system."""
    env: dict[str, str] = field(default_factory=dict)
    """Extra variables exported in the job script (e.g. OPENMIND_CURATE_CACHE)."""
    log_directory: str = "slurm-logs"
    """Where SLURM writes each job's stdout/stderr (relative to the working folder)."""
    local_directory: str | None = None
    """Node-local scratch for Dask's spill files (e.g. ``$TMPDIR``); None = Dask's default."""
    interface: str | None = None
    """Network interface of the scheduler and workers (e.g. ``ib0``) where the
    default one does not reach the compute nodes."""
    lifetime: str | None = None
    """Retire workers gracefully after this long (e.g. ``3h45m``, under the
    walltime); the launcher then keeps the job count up with fresh jobs."""
    job_name: str = "curate-worker"
    extra_directives: list[str] = field(default_factory=list)
    """More ``#SBATCH`` lines, without the prefix (e.g. ``--qos=normal``)."""

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> SlurmConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(doc) - known)
        if unknown:
            raise InputError(f"unknown SLURM config keys {unknown}; known: {sorted(known)}")
        cfg = cls(**doc)
        if not isinstance(cfg.cores, int) or cfg.cores < 1:
            raise InputError(f"cores must be a positive integer, not {cfg.cores!r}")
        return cfg


def load_config(path: str | os.PathLike[str]) -> SlurmConfig:
    try:
        doc = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as exc:
        raise InputError(f"{path}: cannot read the SLURM settings: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise InputError(f"{path}: expected a mapping of settings")
    return SlurmConfig.from_dict(doc)


def job_script_prologue(cfg: SlurmConfig, venv: str, workdir: str) -> list[str]:
    """The shell lines a job runs before its workers start."""
    variables = {**THREAD_LIMITS, **cfg.env}
    return [
        cfg.activate.replace("{venv}", venv),  # not format(): ${HOME}-style lines stay
        *[f"export {k}={shlex.quote(str(v))}" for k, v in variables.items()],
        f"cd {shlex.quote(workdir)}",
    ]


def cluster_kwargs(
    cfg: SlurmConfig, venv: str | None = None, workdir: str | None = None
) -> dict[str, Any]:
    """`SLURMCluster` keyword arguments for `cfg` (pure; nothing is started)."""
    workdir = workdir or os.getcwd()
    extra_args = ["--lifetime", cfg.lifetime, "--lifetime-stagger", "5m"] if cfg.lifetime else []
    return dict(
        cores=cfg.cores,
        processes=cfg.cores,  # one thread per worker
        memory=cfg.memory,
        walltime=cfg.walltime,
        queue=cfg.partition,
        account=cfg.account,
        job_name=cfg.job_name,
        job_script_prologue=job_script_prologue(cfg, venv or sys.prefix, workdir),
        job_extra_directives=list(cfg.extra_directives),
        log_directory=str(Path(workdir, cfg.log_directory)),
        local_directory=cfg.local_directory,
        interface=cfg.interface,
        worker_extra_args=extra_args,
        python=sys.executable,
    )


class Cluster(Protocol):
    scheduler_address: str

    def close(self) -> Any: ...


def slurm_cluster(cfg: SlurmConfig, n_jobs: int) -> Cluster:
    """A started `SLURMCluster` asked for `n_jobs` jobs (they queue in SLURM)."""
    from dask_jobqueue import SLURMCluster

    cluster = SLURMCluster(**cluster_kwargs(cfg))
    if cfg.lifetime:  # retired jobs are replaced, so the count holds past the walltime
        cluster.adapt(minimum_jobs=n_jobs, maximum_jobs=n_jobs)
    else:
        cluster.scale(jobs=n_jobs)
    return cluster


def batch_commands() -> set[str]:
    """The `curate` commands that take ``--scheduler`` (read from the CLI itself)."""
    import typer.main

    from openmind_curate.cli import app

    group = typer.main.get_command(app)
    return {
        name
        for name, cmd in group.commands.items()  # type: ignore[attr-defined]
        if any("--scheduler" in p.opts for p in cmd.params)
    }


def with_scheduler(command: Sequence[str], address: str) -> list[str]:
    """Check `command` is a `curate` batch command and point it at `address`."""
    argv = list(command)
    if not argv or Path(argv[0]).name != "curate":
        raise InputError(f"expected a `curate` command after --, got {shlex.join(argv)!r}")
    allowed = batch_commands()
    if len(argv) < 2 or argv[1] not in allowed:
        got = argv[1] if len(argv) > 1 else "nothing"
        raise InputError(
            f"`curate {got}` is not a batch command; "
            f"SLURM runs one of: {', '.join(sorted(allowed))}"
        )
    if any(a == "--scheduler" or a.startswith("--scheduler=") for a in argv):
        raise InputError("leave out --scheduler: the launcher sets it to its SLURM cluster")
    return [*argv, "--scheduler", address]


#: The `curate` console script, run by this interpreter (no reliance on PATH).
CURATE = ("-c", "from openmind_curate.cli import run; run()")


def run_curate(argv: Sequence[str]) -> int:
    """Run a `curate` command line in a child process of this interpreter."""
    proc = subprocess.Popen([sys.executable, *CURATE, *argv[1:]])
    try:
        return proc.wait()
    finally:
        if proc.poll() is None:  # we were interrupted: stop the command first
            _stop_child(proc)


def _stop_child(proc: subprocess.Popen) -> None:
    """A terminal's Ctrl-C reached the command too and it is stopping cleanly
    (it counts a second signal as "exit at once"): give it time, then ask it
    with one SIGINT, and kill it only if that fails."""
    for send in (None, proc.send_signal):
        if send is not None:
            send(signal.SIGINT)
        try:
            proc.wait(timeout=10 if send is None else 30)
            return
        except subprocess.TimeoutExpired:
            continue
    proc.kill()
    proc.wait()


def launch(
    command: Sequence[str],
    cfg: SlurmConfig,
    n_jobs: int,
    *,
    cluster_factory: Callable[[SlurmConfig, int], Cluster] = slurm_cluster,
    run: Callable[[Sequence[str]], int] = run_curate,
    log: Callable[[str], None] = print,
) -> int:
    """Start the cluster, run `command` on it, always close it; the command's exit code."""
    if n_jobs < 1:
        raise InputError(f"--jobs must be at least 1, not {n_jobs}")
    with_scheduler(command, "tcp://check:0")  # refuse a bad command before any job is queued
    cluster = cluster_factory(cfg, n_jobs)
    try:
        argv = with_scheduler(command, cluster.scheduler_address)
        log(f"{n_jobs} jobs x {cfg.cores} workers asked for; waiting for the first to start")
        # The command checks that workers see its output folder: it needs one
        # worker up. SLURM jobs queue like any other, so this may take a while.
        wait = getattr(cluster, "wait_for_workers", None)
        if wait is not None:
            wait(1)
        log(f"running: {shlex.join(argv)}")
        return run(argv)
    finally:
        log("closing the cluster (pending and running worker jobs are cancelled)")
        with contextlib.suppress(Exception):
            cluster.scale(0)  # type: ignore[attr-defined]
        cluster.close()


def _raise_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(args: Sequence[str] | None = None, default_config: Path | None = None) -> int:
    """`python -m openmind_curate.slurm [--config F] [--jobs N] [--dry-run] -- curate CMD ...`.

    Without a config file the `SlurmConfig` defaults apply."""
    args = list(sys.argv[1:] if args is None else args)
    cut = args.index("--") if "--" in args else len(args)
    parser = argparse.ArgumentParser(
        prog="slurm.py",
        usage="%(prog)s [--config FILE] [--jobs N] [--dry-run] -- curate COMMAND ...",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument("--config", type=Path, default=default_config, help="settings (YAML)")
    parser.add_argument("--jobs", type=int, default=1, help="SLURM jobs (each runs CORES workers)")
    parser.add_argument("--dry-run", action="store_true", help="print the job script; submit none")
    opts = parser.parse_args(args[:cut])
    command = args[cut + 1 :]
    try:
        if not command:
            raise InputError("give the curate command after --, e.g. -- curate dwi --index ...")
        if opts.jobs < 1:
            raise InputError(f"--jobs must be at least 1, not {opts.jobs}")
        cfg = load_config(opts.config) if opts.config else SlurmConfig()
        with_scheduler(command, "tcp://check:0")
    except CurateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if opts.dry_run:
        from dask_jobqueue import SLURMCluster

        quiet_port = {"dashboard_address": ":0"}  # only rendering: any free port
        with SLURMCluster(**cluster_kwargs(cfg), scheduler_options=quiet_port) as cluster:
            print(cluster.job_script())
            print(f"# then: {shlex.join(with_scheduler(command, cluster.scheduler_address))}")
        return 0
    signal.signal(signal.SIGTERM, _raise_on_sigterm)  # scancel of the launcher: clean up too
    try:
        return launch(command, cfg, opts.jobs)
    except KeyboardInterrupt:
        print("interrupted; worker jobs cancelled", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
