"""The one error model of openmind-curate.

Every problem a user can fix (a bad option, a file that cannot be read, a
store held by another process) is a `CurateError`; the command line prints
its message on one line and exits 2. Anything else is a bug: the command
line logs its traceback and exits 1 (see `cli.app.run`).

The kinds say who must act. Each kind also derives from the built-in
exception it replaced, so callers that caught `ValueError` keep working.
"""

from __future__ import annotations

import signal
from typing import Any


class CurateError(Exception):
    """A problem the user can fix; the message names the file and the problem."""


class InputError(CurateError, ValueError):
    """Bad input given by the user: an option, a path, a table they supplied."""


class DataError(CurateError, ValueError):
    """Data on disk that cannot be used: an unreadable image, a table that breaks its schema."""


class ConflictError(CurateError, ValueError):
    """The work collides with state: a locked or newer store, a mismatched checkpoint."""


class RemoteError(CurateError, RuntimeError):
    """A remote service refused or failed (OpenNeuro, a Dask scheduler)."""


class MissingExtra(CurateError, ImportError):
    """An optional dependency set (an extra, such as ``openmind-curate[train]``)
    is not installed: the message names the extra and the pip line that installs it."""


class BatchInterrupted(Exception):
    """A batch stopped by SIGINT (Ctrl-C) or SIGTERM.

    The command line prints ``str(exc)`` and exits with ``exc.exit_code``
    (130 or 143, the shell's convention of 128 + the signal number).
    `result` holds the items finished before the signal (a `jobs.BatchResult`).
    Not a `CurateError`: nothing is wrong, the user stopped the work.
    """

    def __init__(self, signum: int, done: int, total: int, result: Any = None):
        self.signum = signum
        self.exit_code = 128 + signum
        self.done = done
        self.total = total
        self.result = result
        super().__init__(signum, done, total)

    def __str__(self) -> str:
        name = signal.Signals(self.signum).name
        return (
            f"Interrupted ({name}): {self.done} of {self.total} items finished; "
            "run the same command again to resume"
        )
