"""The batch runner: error isolation, atomic outputs, skip-on-rerun, kill and
resume, on the local pool and on a real Dask LocalCluster with two workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from openmind_curate.atomic import atomic_path, is_temp
from openmind_curate.jobs import JobOptions, run_batch, source_stamp
from openmind_curate.jobs.stage import StageJob, records, run_stage

sys.path.insert(0, str(Path(__file__).parent))
import jobfuncs  # noqa: E402

LOCAL = JobOptions(workers=2, progress=False)


def _check_outputs(out: Path, n: int) -> None:
    files = sorted(out.iterdir())
    assert [f.name for f in files] == [f"out-{i:03d}.txt" for i in range(n)], "missing or extra"
    for i, f in enumerate(files):
        assert f.read_text() == jobfuncs.payload(i), f"partial or wrong output {f}"


def test_failing_items_are_recorded_and_the_batch_goes_on():
    result = run_batch(
        jobfuncs.fail_on_multiples_of_three, range(10), LOCAL, label=lambda i: f"file-{i}.nii.gz"
    )
    assert [r.value for r in result.done] == [i * i for i in range(10) if i % 3]
    assert [r.label for r in result.failed] == [
        "file-0.nii.gz",
        "file-3.nii.gz",
        "file-6.nii.gz",
        "file-9.nii.gz",
    ]
    assert all("ValueError: bad input" in r.error for r in result.failed)
    assert "FAILED file-3.nii.gz: ValueError: bad input 3" in result.summary()


def test_a_worker_that_dies_fails_only_its_own_item():
    result = run_batch(jobfuncs.die_on_four, range(8), LOCAL, label=lambda i: f"series-{i}")
    assert sorted(r.value for r in result.done) == [0, 1, 2, 3, 5, 6, 7]
    assert [r.label for r in result.failed] == ["series-4"]
    assert "worker process died" in result.failed[0].error


def test_atomic_path_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "x.nii.gz"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            assert tmp.name.endswith(".nii.gz") and tmp.parent == tmp_path
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_finished_items_are_skipped_and_stale_temps_removed(tmp_path):
    items = [(str(tmp_path), i, 0.0) for i in range(6)]
    first = run_batch(jobfuncs.slow_write, items[:3], LOCAL, outputs=jobfuncs.output_of)
    assert len(first.done) == 3
    stale = tmp_path / ".out-004.txt.tmp-999-deadbeef.txt"
    stale.write_text("partial")
    second = run_batch(jobfuncs.slow_write, items, LOCAL, outputs=jobfuncs.output_of)
    assert (len(second.skipped), len(second.done)) == (3, 3)
    assert not stale.exists()
    _check_outputs(tmp_path, 6)


def test_stale_temps_are_looked_for_once_per_batch_not_per_item(tmp_path, monkeypatch):
    """A resume of many items into one big folder lists that folder once."""
    listed: list[Path] = []
    real_iterdir = Path.iterdir

    def counting_iterdir(self):
        listed.append(self)
        return real_iterdir(self)

    monkeypatch.setattr(Path, "iterdir", counting_iterdir)
    items = [(str(tmp_path), i, 0.0) for i in range(40)]
    result = run_batch(jobfuncs.slow_write, items, LOCAL, outputs=jobfuncs.output_of)
    assert len(result.done) == 40
    assert listed.count(tmp_path) == 1


def _kill_midway(out: Path, n: int, scheduler: str) -> None:
    """Start a batch in a child process and SIGKILL it once some outputs exist."""
    cmd = [sys.executable, jobfuncs.__file__, str(out), str(n), "0.4", scheduler]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        done = [p for p in out.iterdir() if not is_temp(p)] if out.exists() else []
        if len(done) >= 3:
            break
        assert proc.poll() is None, "the batch ended before it could be killed"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the job and its local workers
    proc.wait()


@pytest.mark.parametrize("backend", ["local", "dask"])
def test_killed_job_resumes_without_duplicates_or_partials(tmp_path, backend, request):
    n = 12
    scheduler = "-"
    options = LOCAL
    if backend == "dask":
        cluster = request.getfixturevalue("dask_cluster")
        scheduler = cluster.scheduler_address
        options = JobOptions(scheduler=scheduler, progress=False)
    out = tmp_path / "out"
    _kill_midway(out, n, scheduler)
    if backend == "dask":
        _wait_idle(scheduler)
    finished = {p.name for p in out.iterdir() if not is_temp(p)}
    assert 3 <= len(finished) < n, "the kill should land part-way through"
    items = [(str(out), i, 0.0) for i in range(n)]
    result = run_batch(jobfuncs.slow_write, items, options, outputs=jobfuncs.output_of)
    assert result.ok, result.summary()
    assert {r.label for r in result.skipped} >= {
        str(it) for it in items if jobfuncs.output_of(it)[0].name in finished
    }
    _check_outputs(out, n)  # also proves no temporary file is left


def _wait_idle(address: str) -> None:
    """Tasks a killed client left running finish (atomically) before we resume."""
    from dask.distributed import Client

    with Client(address) as client:
        deadline = time.time() + 60
        while any(client.processing().values()) and time.time() < deadline:
            time.sleep(0.1)


def test_dask_cluster_records_a_raising_worker(dask_cluster):
    options = JobOptions(scheduler=dask_cluster.scheduler_address, progress=False)
    result = run_batch(
        jobfuncs.fail_on_multiples_of_three, range(7), options, label=lambda i: f"img-{i}"
    )
    assert sorted(r.value for r in result.done) == [1, 4, 16, 25]
    assert sorted(r.label for r in result.failed) == ["img-0", "img-3", "img-6"]
    assert all("ValueError" in r.error for r in result.failed)
    # Results come back in item order whatever order workers finished in.
    assert [r.label for r in result.results] == [f"img-{i}" for i in range(7)]


def test_outputs_made_with_other_options_are_recomputed_unless_kept(tmp_path):
    items = [(str(tmp_path), i, 0.0) for i in range(4)]
    run_batch(jobfuncs.slow_write, items, LOCAL, outputs=jobfuncs.output_of)
    for i in (1, 2):  # as if made with other options (the hook reads the marker)
        jobfuncs.output_of(items[i])[0].write_text("stale")

    kept = run_batch(
        jobfuncs.slow_write,
        items,
        JobOptions(workers=2, progress=False, keep_existing=True),
        outputs=jobfuncs.output_of,
        current=jobfuncs.options_current,
    )
    assert (len(kept.skipped), kept.recomputed) == (4, [])
    assert jobfuncs.output_of(items[1])[0].read_text() == "stale"

    redone = run_batch(
        jobfuncs.slow_write,
        items,
        LOCAL,
        outputs=jobfuncs.output_of,
        current=jobfuncs.options_current,
    )
    assert redone.recomputed == [str(items[1]), str(items[2])]
    assert [r.label for r in redone.done] == redone.recomputed
    assert len(redone.skipped) == 2
    assert "2 recomputed: options changed" in redone.summary()
    _check_outputs(tmp_path, 4)


def test_a_failed_recompute_does_not_leave_the_old_output_looking_current(tmp_path):
    """The stale marker goes before the item is redone: if the redo fails or is
    killed, the item is unfinished (redone next time), not silently kept."""
    item = (str(tmp_path), 3, 0.0)
    marker = jobfuncs.output_of(item)[0]
    marker.write_text("stale")
    result = run_batch(
        jobfuncs.fail_on_tuples,
        [item],
        LOCAL,
        outputs=jobfuncs.output_of,
        current=jobfuncs.options_current,
    )
    assert [r.label for r in result.failed] == result.recomputed == [str(item)]
    assert not marker.exists()


def test_options_hash_ignores_threads_and_tracks_what_shapes_outputs(tmp_path):
    from openmind_curate.dwi.pipeline import DwiConfig
    from openmind_curate.jobs import marker_is_current, options_hash

    base = options_hash(DwiConfig())
    assert options_hash(DwiConfig(threads=7)) == base
    assert options_hash(DwiConfig(gibbs=False)) != base
    assert options_hash(DwiConfig()) == base  # stable across calls
    marker = tmp_path / "record.json"
    marker.write_text('{"status": "done"}')  # an older release: no hash recorded
    assert marker_is_current(marker, base)
    marker.write_text(f'{{"options_hash": "{base}"}}')
    assert marker_is_current(marker, base)
    assert not marker_is_current(marker, options_hash(DwiConfig(gibbs=False)))


def test_an_item_done_elsewhere_without_its_outputs_here_fails(tmp_path):
    """A worker that wrote to its own disk (no shared file system): the item
    is a failure naming the missing output, not a silent loss."""
    items = [(str(tmp_path), i, 0.0) for i in range(3)]
    result = run_batch(jobfuncs.handler_names, items, LOCAL, outputs=jobfuncs.output_of)
    assert len(result.failed) == 3 and not result.done
    assert all("is not here" in r.error and "out-00" in r.error for r in result.failed)


@dataclass(frozen=True)
class _Scale:
    factor: int = 1
    threads: int = 1  # speed only: not in the options hash


@dataclass(frozen=True)
class _ScaleJob(StageJob):
    """A toy stage: a file's integer times `factor`, its record the marker."""

    source: str
    out: str
    config: _Scale = field(default_factory=_Scale)

    @property
    def marker(self) -> Path:
        return Path(self.out) / (Path(self.source).name + ".json")


def _scale(job: _ScaleJob) -> dict:
    stamp = source_stamp(job.source)
    value = int(Path(job.source).read_text()) * job.config.factor
    return job.write_marker({"value": value}, stamp)


def test_a_stage_skips_current_markers_and_redoes_changed_options_and_inputs(tmp_path):
    sources = []
    for name, text in (("a", "2"), ("b", "3")):
        (tmp_path / name).write_text(text)
        sources.append(str(tmp_path / name))
    one = JobOptions(workers=1, progress=False)

    def run(factor: int, options: JobOptions = one, extra: tuple[str, ...] = ()):
        jobs = [_ScaleJob(s, str(tmp_path / "out"), _Scale(factor)) for s in (*sources, *extra)]
        batch = run_stage(_scale, jobs, options)
        found = records(jobs, batch)
        return batch, [None if r is None else r["value"] for r in found]

    batch, values = run(10)
    assert (len(batch.done), values) == (2, [20, 30])
    assert str(_ScaleJob(sources[0], "o")) == sources[0]  # the label is the source
    batch, values = run(10, replace(one, workers=2))  # the records come back from disk
    assert (len(batch.skipped), values) == (2, [20, 30])
    batch, values = run(100, replace(one, keep_existing=True))
    assert (len(batch.skipped), batch.recomputed, values) == (2, [], [20, 30])
    batch, values = run(100)
    assert (batch.recomputed, values) == (sources, [200, 300])
    st = os.stat(sources[1])
    os.utime(sources[1], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # b was replaced
    batch, values = run(100, extra=(str(tmp_path / "missing"),))
    assert [r.status for r in batch.results] == ["skipped", "done", "failed"]
    assert values == [200, 300, None]
