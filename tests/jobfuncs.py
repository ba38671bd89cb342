"""Module-level job functions for the runner tests (workers import them by name),
and a `python -m`-style entry point the kill-and-resume and interrupt tests run
as a child. The entry point handles `BatchInterrupted` exactly as the CLI does:
print the message, exit with its code."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from openmind_curate.atomic import atomic_path
from openmind_curate.jobs import BatchInterrupted, JobOptions, run_batch

PAYLOAD_LINES = 2000


def payload(i: int) -> str:
    return "".join(f"item {i} line {k}\n" for k in range(PAYLOAD_LINES))


def output_of(item: tuple[str, int, float]) -> list[Path]:
    out, i, _ = item
    return [Path(out) / f"out-{i:03d}.txt"]


def slow_write(item: tuple[str, int, float]) -> int:
    """Write a multi-line output slowly, in pieces, so a kill can land mid-write."""
    out, i, delay = item
    with atomic_path(output_of(item)[0]) as tmp:
        with open(tmp, "w") as fh:
            text = payload(i)
            half = len(text) // 2
            fh.write(text[:half])
            fh.flush()
            time.sleep(delay)
            fh.write(text[half:])
    return i


def fail_on_multiples_of_three(i: int) -> int:
    if i % 3 == 0:
        raise ValueError(f"bad input {i}")
    return i * i


def fail_on_tuples(item: object) -> None:
    raise ValueError(f"cannot redo {item}")


def die_on_four(i: int) -> int:
    if i == 4:
        os.kill(os.getpid(), signal.SIGKILL)
    return i


def handler_names(_: object) -> dict[str, str]:
    """The worker's SIGINT/SIGTERM dispositions, by name."""
    names = {signal.SIG_IGN: "SIG_IGN", signal.SIG_DFL: "SIG_DFL"}
    return {
        s.name: names.get(signal.getsignal(s), "python") for s in (signal.SIGINT, signal.SIGTERM)
    }


def options_current(item: tuple[str, int, float]) -> bool:
    """A `current` hook: an output is current unless it says ``stale`` (test data)."""
    return not output_of(item)[0].read_text().startswith("stale")


def main() -> None:
    """``jobfuncs.py OUT N DELAY SCHEDULER [FAST]``: N items of DELAY seconds
    each, except the first FAST, which take 0.05 s (finished before a signal)."""
    out, n, delay, scheduler = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    fast = int(sys.argv[5]) if len(sys.argv) > 5 else 0
    items = [(out, i, 0.05 if i < fast else delay) for i in range(n)]
    options = JobOptions(
        workers=2, scheduler=None if scheduler == "-" else scheduler, progress=False
    )
    try:
        result = run_batch(slow_write, items, options, outputs=output_of)
    except BatchInterrupted as exc:  # what the CLI entry point does
        print(str(exc), file=sys.stderr, flush=True)
        sys.exit(exc.exit_code)
    print(result.summary(), flush=True)


if __name__ == "__main__":
    main()
