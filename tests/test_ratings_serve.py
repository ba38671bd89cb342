"""`curate rate` hands SIGTERM on to its Streamlit child: a `kill` stops the app."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _children(pid: int) -> list[int]:
    """Direct children of `pid`, from /proc (psutil may not be installed)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        text = (task / "children").read_text() if (task / "children").exists() else ""
        found += [int(p) for p in text.split()]
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has stopped serving


def _until(check, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return check()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_stop_signal_to_curate_rate_stops_the_streamlit_child(tmp_path, signum, code):
    from pgserver import free_port
    from test_rater_app import build_site

    site = build_site(tmp_path)
    port = free_port()
    cmd = [sys.executable, "-m", "openmind_curate.cli", "rate", "--index", str(site["index"])]
    cmd += ["--port", str(port)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "STREAMLIT_SERVER_FILE_WATCHER_TYPE": "none"}
    log = tmp_path / "rate.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    children: list[int] = []
    try:
        started = _until(lambda: _answers(url) or proc.poll() is not None, 60)
        assert started and proc.poll() is None, log.read_text()
        children = _children(proc.pid)
        assert children, "curate rate started no child"
        proc.send_signal(signum)
        assert proc.wait(30) == code, log.read_text()
        assert _until(lambda: not any(_alive(c) for c in children), 10), log.read_text()
        assert not _answers(url)
    finally:
        for pid in [*children, proc.pid]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
