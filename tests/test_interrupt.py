"""Ctrl-C, SIGINT and SIGTERM stop a batch at once and cleanly (issue 10).

A child process (tests/jobfuncs.py, which catches `BatchInterrupted` the way
the CLI does) runs 8 items: two quick ones, then items that sleep 60 s in the
middle of their write. Once the quick ones are done and slow ones are running,
the test signals the child's process group (a terminal's Ctrl-C) or its main
process alone (``kill``). The command must exit within 5 s (so running items
were killed, not waited for) with 130/143, say what was done and how to
resume, print no traceback, and leave only complete outputs or temporary files
that the next run removes; that run then finishes the rest.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from openmind_curate.atomic import is_temp
from openmind_curate.jobs import JobOptions, run_batch

sys.path.insert(0, str(Path(__file__).parent))
import jobfuncs  # noqa: E402

N, FAST, SLOW_S = 8, 2, 60.0
EXIT_BOUND_S = 5.0
CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


def _start(out: Path, scheduler: str) -> subprocess.Popen:
    """The child batch, in its own session (a shell's background job would
    ignore SIGINT), once FAST items are finished and two slow ones are writing."""
    cmd = [sys.executable, jobfuncs.__file__, str(out), str(N), str(SLOW_S), scheduler, str(FAST)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        cmd,
        env=env,
        start_new_session=True,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        files = list(out.iterdir()) if out.exists() else []
        # both workers are inside slow items: each reported its quick item
        # before taking the next (one busy worker left a quick item's result
        # in flight to a Dask client now and then)
        if sum(not is_temp(p) for p in files) >= FAST and sum(map(is_temp, files)) >= 2:
            return proc
        if proc.poll() is not None:
            raise AssertionError(f"the batch ended before the signal: {proc.communicate()}")
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError("the slow items never started")


def _signal_and_wait(proc: subprocess.Popen, signals: list[int], group: bool):
    """Send the signals; return (seconds from the first to exit, stdout, stderr)."""
    send = os.killpg if group else os.kill
    sent = time.monotonic()
    for sig in signals:
        send(proc.pid, sig)
    try:
        stdout, stderr = proc.communicate(timeout=60)  # generous; the bound is asserted below
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return time.monotonic() - sent, stdout, stderr


def _no_stray_processes(pid: int) -> None:
    """Nothing of the child's session is left running (workers killed)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.killpg(pid, signal.SIGKILL)
    raise AssertionError("worker processes outlived the interrupted batch")


def _check_resume(out: Path) -> None:
    finished = sorted(p.name for p in out.iterdir() if not is_temp(p))
    assert finished == [f"out-{i:03d}.txt" for i in range(FAST)], "slow items were not killed"
    for i in range(FAST):
        assert (out / f"out-{i:03d}.txt").read_text() == jobfuncs.payload(i)
    items = [(str(out), i, 0.0) for i in range(N)]
    again = run_batch(
        jobfuncs.slow_write,
        items,
        JobOptions(workers=2, progress=False),
        outputs=jobfuncs.output_of,
    )
    assert (len(again.skipped), len(again.done)) == (FAST, N - FAST), again.summary()
    files = sorted(out.iterdir())
    assert [f.name for f in files] == [f"out-{i:03d}.txt" for i in range(N)], "temps left"
    assert all(f.read_text() == jobfuncs.payload(i) for i, f in enumerate(files))


CASES = [
    ("-", signal.SIGINT, True),  # Ctrl-C in a terminal: the whole process group
    ("-", signal.SIGINT, False),  # kill -INT on the main process alone
    ("-", signal.SIGTERM, True),
    ("-", signal.SIGTERM, False),
    ("local", signal.SIGINT, True),  # Dask LocalCluster: its workers get the Ctrl-C too
    ("local", signal.SIGTERM, False),
]


IDS = [f"{'pool' if s == '-' else 'dask'}-{g.name}-{'group' if p else 'main'}" for s, g, p in CASES]


@pytest.mark.parametrize(("scheduler", "sig", "group"), CASES, ids=IDS)
def test_a_signal_stops_the_batch_at_once_and_it_resumes(tmp_path, scheduler, sig, group):
    out = tmp_path / "out"
    proc = _start(out, scheduler)
    seconds, stdout, stderr = _signal_and_wait(proc, [sig], group)
    assert proc.returncode == CODES[sig], (proc.returncode, stderr)
    assert seconds < EXIT_BOUND_S, f"took {seconds:.1f} s to exit"
    name = signal.Signals(sig).name
    assert (
        f"Interrupted ({name}): {FAST} of {N} items finished; run the same command again to resume"
    ) in stderr
    assert "Traceback" not in stderr + stdout, stderr
    _no_stray_processes(proc.pid)
    _check_resume(out)


def test_a_second_ctrl_c_exits_at_once_without_tracebacks(tmp_path):
    """Two Ctrl-C in a row: whichever ends the child, the code is 130 and
    nothing is printed but (at most) the interruption message."""
    out = tmp_path / "out"
    proc = _start(out, "-")
    seconds, stdout, stderr = _signal_and_wait(proc, [signal.SIGINT, signal.SIGINT], True)
    assert proc.returncode == 130, (proc.returncode, stderr)
    assert seconds < EXIT_BOUND_S, f"took {seconds:.1f} s to exit"
    assert "Traceback" not in stderr + stdout, stderr
    _no_stray_processes(proc.pid)
    _check_resume(out)


def test_handlers_are_installed_only_while_a_batch_runs(tmp_path):
    before = {sig: signal.getsignal(sig) for sig in CODES}
    during = []

    def label(i: int) -> str:  # labels are computed in the main thread, during the batch
        during.append(signal.getsignal(signal.SIGINT))
        return str(i)

    seen = run_batch(
        jobfuncs.handler_names, range(1), JobOptions(workers=1, progress=False), label=label
    )
    assert during and during[0] is not before[signal.SIGINT]
    assert {sig: signal.getsignal(sig) for sig in CODES} == before
    # The workers leave SIGINT to the main process and die on SIGTERM.
    assert seen.done[0].value == {"SIGINT": "SIG_IGN", "SIGTERM": "SIG_DFL"}


def _sleep_in_child(seconds: float) -> None:
    time.sleep(seconds)


def test_finetunes_sigterm_handler_lets_forked_workers_die_quietly(capfd):
    """`curate finetune` turns SIGTERM into KeyboardInterrupt in its own
    process; a worker forked meanwhile (nnU-Net's pools) inherits the handler
    and must die by the signal, not print a KeyboardInterrupt traceback."""
    import multiprocessing

    from openmind_curate.cli.finetune import _signals_interrupt

    with _signals_interrupt() as caught:
        child = multiprocessing.get_context("fork").Process(target=_sleep_in_child, args=(30,))
        child.start()
        time.sleep(0.5)
        os.kill(child.pid, signal.SIGTERM)
        child.join(10)
    assert child.exitcode == -signal.SIGTERM and caught == []
    assert "KeyboardInterrupt" not in capfd.readouterr().err
