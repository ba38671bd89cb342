"""Checks a command runs on its inputs and outputs before it starts any work.

A user's mistake (an output path that is a file, a folder nobody can write, a
scheduler address with a typo, an empty index) should cost a one-line message
naming the path and the problem, not a traceback after minutes of work. Each
check raises `InputError`; the CLI prints it and exits with code 2.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit

from openmind_curate.errors import InputError  # noqa: F401 - re-exported: older imports name preflight.InputError

#: How long a scheduler may take to accept a connection before we give up.
SCHEDULER_TIMEOUT_S = 5.0


def _probe_write(folder: Path, target: Path) -> None:
    """Create `folder` if needed and prove a file can be written in it (as
    root, permission bits say nothing: only a real write tells)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".curate-write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(target) else ""
        raise InputError(f"cannot write {target}: {reason}{where}") from None


def _first_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path("/")


def _not_under_a_file(path: Path) -> None:
    anchor = _first_existing(path.parent)
    if not anchor.is_dir():
        raise InputError(f"cannot create {path}: {anchor} is a file, not a folder")


def output_file(path: Path, option: str = "--out") -> Path:
    """An output file path: not a folder, its folder creatable and writable.
    Returns it absolute (paths sent to a cluster's workers must be)."""
    path = Path(os.path.abspath(path))
    if path.is_dir():
        raise InputError(f"{option} {path} is a folder; give a file path (e.g. {path}/out.parquet)")
    _not_under_a_file(path)
    _probe_write(path.parent, path)
    return path


def output_dir(path: Path, option: str = "--out") -> Path:
    """An output folder: not a file, creatable and writable. Returns it absolute."""
    path = Path(os.path.abspath(path))
    if path.exists() and not path.is_dir():
        raise InputError(f"{option} {path} is a file, not a folder")
    _not_under_a_file(path)
    _probe_write(path, path)
    return path


def input_files(paths: Iterable[Path]) -> list[Path]:
    """Files that must exist and be regular files, made absolute."""
    out = []
    for p in paths:
        if not p.exists():
            raise InputError(f"file not found: {p}")
        if p.is_dir():
            raise InputError(f"{p} is a folder, not a file")
        out.append(Path(os.path.abspath(p)))
    return out


def input_dirs(paths: Iterable[Path]) -> list[Path]:
    missing = [str(p) for p in paths if not p.is_dir()]
    if missing:
        raise InputError(f"not a folder: {', '.join(missing)}")
    return [Path(os.path.abspath(p)) for p in paths]


def scheduler(address: str | None, timeout: float = SCHEDULER_TIMEOUT_S) -> str | None:
    """A Dask scheduler address that parses and answers within `timeout`
    (``local`` and None need no check)."""
    if address is None or address == "local":
        return address
    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host, port = None, None
    if parts.scheme not in ("tcp", "tls") or not host or not port:
        raise InputError(
            f"--scheduler {address!r} is not a Dask scheduler address: use tcp://HOST:PORT "
            "(e.g. tcp://127.0.0.1:8786) or 'local'"
        )
    try:
        with contextlib.closing(socket.create_connection((host, port), timeout=timeout)):
            pass
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
        raise InputError(
            f"cannot reach the Dask scheduler at {address} within {timeout:.0f} s ({reason}): "
            "is `dask scheduler` running there?"
        ) from None
    return address


def _exists(path: str) -> bool:
    """Runs on each worker (by reference, so a test can stand in for a blind one)."""
    return os.path.exists(path)


def workers_see(address: str | None, folder: Path) -> None:
    """On a remote Dask cluster every worker must see `folder` at the same path
    (a shared file system), or its outputs would land on the workers' disks.

    A probe file is written here and looked for on every worker.
    """
    if address is None or address == "local":
        return
    # Imported here: distributed costs about a second to import, and only a
    # run on a remote cluster needs it.
    from dask.distributed import Client

    probe = folder / f".curate-visible-{os.getpid()}-{os.urandom(4).hex()}"
    probe.write_text("")
    try:
        with Client(address, timeout=SCHEDULER_TIMEOUT_S * 2) as client:
            seen = client.run(_exists, str(probe))
    except OSError as exc:
        raise InputError(f"cannot use the Dask scheduler at {address}: {exc}") from None
    finally:
        probe.unlink(missing_ok=True)
    if not seen:
        raise InputError(
            f"the Dask scheduler at {address} has no workers: start some with "
            f"`dask worker {address}`"
        )
    blind = sorted(w for w, ok in seen.items() if not ok)
    if blind:
        raise InputError(
            f"{len(blind)} of {len(seen)} Dask workers ({', '.join(blind[:3])}) cannot see "
            f"{folder}: outputs must go to a file system that this machine and every worker "
            "mount at the same path"
        )
