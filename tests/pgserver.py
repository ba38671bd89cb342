"""A throw-away PostgreSQL server for the tests and benchmarks (not a fixture:
conftest's session server, the rater outage test's own server and
benchmarks/rater_browser.py all use it).

127.0.0.1 only, trust authentication, user ``postgres``, data in a fresh
folder under /tmp, durability off (a crash loses nothing that matters). Run
as root (CI), initdb and pg_ctl run as the ``postgres`` user, since initdb
refuses root. `stop` and `start` again keep the data and the port: that is
how a test simulates a database outage.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

OPTIONS = (
    "-c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off "
    "-c full_page_writes=off -c max_connections=100"
)


class NoPostgres(RuntimeError):
    """No server binaries here: the caller skips, saying why."""


def postgres_bin() -> Path | None:
    """The folder holding `initdb` and `pg_ctl` of one PostgreSQL install, or None.

    PATH first (symlinks followed, so /usr/local/bin/initdb -> /usr/lib/postgresql/15/bin
    finds that version's pg_ctl), then Debian's /usr/lib/postgresql/<version>/bin,
    newest first.
    """
    folders = []
    found = shutil.which("initdb")
    if found:
        folders += [Path(found).resolve().parent, Path(found).parent]
    versions = Path("/usr/lib/postgresql").glob("*/bin")
    folders += sorted(
        versions, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else -1, reverse=True
    )
    for folder in folders:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ThrowawayPostgres:
    """initdb once, then `start` / `stop` as often as needed; `remove` at the end."""

    def __init__(self) -> None:
        import pwd

        self.bindir = postgres_bin()
        if self.bindir is None:
            raise NoPostgres(
                "no PostgreSQL server binaries (initdb, pg_ctl) on PATH or in "
                "/usr/lib/postgresql/*/bin: install Debian's `postgresql` package"
            )
        self.prefix: list[str] = []
        user = None
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError(
                    "running as root, and initdb refuses root, but there is no "
                    "`postgres` user to run the test server as"
                ) from None
            self.prefix = ["runuser", "-u", "postgres", "--"]
        self.base = Path(tempfile.mkdtemp(prefix="omc-postgres-", dir="/tmp"))
        self.base.chmod(0o755)  # the server user must reach the data folder
        if user is not None:
            os.chown(self.base, user.pw_uid, user.pw_gid)
        self.data, self.log = self.base / "data", self.base / "server.log"
        self.port: int | None = None
        self._initialized = False

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run([*self.prefix, *args], cwd=self.base, capture_output=True, text=True)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}):\n{self._why(done)}")
        return done

    def _why(self, done: subprocess.CompletedProcess) -> str:
        server_log = self.log.read_text(errors="replace") if self.log.exists() else "(no log)"
        return f"{done.stdout}{done.stderr}\n--- server log {self.log} ---\n{server_log}"

    def start(self) -> str:
        """Start (initdb the first time); returns ``postgresql://postgres@127.0.0.1:<port>``."""
        if not self._initialized:
            self._run(
                *(str(self.bindir / "initdb"), "-D", str(self.data), "-A", "trust"),
                *("-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync"),
            )
            self._initialized = True
        for attempt in range(3):
            port = self.port or free_port()
            started = self._pg_ctl_start(port)
            # a free port can be taken between asking and binding: only that is retried
            taken = self.log.exists() and "could not bind" in self.log.read_text(errors="replace")
            if started.returncode == 0:
                self.port = port
                return self.url
            if not taken or attempt == 2 or self.port is not None:
                raise RuntimeError(
                    f"the test PostgreSQL server did not start (pg_ctl "
                    f"{started.returncode}):\n{self._why(started)}"
                )
            self.log.unlink()
        raise AssertionError("unreachable")

    def _pg_ctl_start(self, port: int) -> subprocess.CompletedProcess:
        options = f"{OPTIONS} -c unix_socket_directories={self.data} -p {port}"
        return self._run(
            *(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log)),
            *("-w", "-t", "60", "-o", options, "start"),
            check=False,
        )

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}"

    def stop(self) -> None:
        """Stop the server (fast: open connections are cut, as in an outage)."""
        if self._initialized:
            self._run(
                str(self.bindir / "pg_ctl"),
                "-D",
                str(self.data),
                "-m",
                "fast",
                "-w",
                "stop",
                check=False,
            )

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)


def create_database(server: str, name: str) -> str:
    """A new empty database on `server`; returns its URL."""
    import psycopg

    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{server}/{name}"
