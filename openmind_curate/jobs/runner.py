"""Map a function over items on a local process pool or a Dask cluster.

Guarantees every batch command relies on:

- one failing item never stops the batch: its exception (or its worker's
  death) becomes an `ItemResult` with the item's label and the reason;
- an item whose outputs all exist is skipped, so a killed job resumes where it
  stopped (outputs are written atomically, see `openmind_curate.atomic`, so
  "exists" means "complete"); temporary files a killed run left behind are removed first;
- an item a worker reports done but whose outputs are not where this process
  looks (a cluster without a shared file system) is a failure, never lost
  silently;
- an item whose outputs exist but were made with other options (the stage's
  `current` hook says so) is redone, unless `JobOptions.keep_existing`;
- Ctrl-C, SIGINT or SIGTERM stop the batch within seconds: no new item starts,
  running ones are killed (their outputs are atomic, so nothing is half
  written) and `run_batch` raises `BatchInterrupted`; a second signal exits at
  once;
- a progress bar on long work.

The function and items must be picklable (module-level functions).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import signal
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from openmind_curate import __version__
from openmind_curate.atomic import remove_stale_temps
from openmind_curate.errors import BatchInterrupted

Status = Literal["done", "skipped", "failed"]

#: How often the batch loop looks for a signal while it waits on workers (s).
POLL_S = 0.1
#: The signals that stop a batch; the exit code is 128 + the signal number.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass(frozen=True)
class JobOptions:
    """How to run a batch; shared by every batch command's --workers/--scheduler."""

    workers: int | None = None
    """Local processes (default: all cores). Ignored with a remote scheduler."""
    scheduler: str | None = None
    """Dask scheduler address (``tcp://host:8786``), ``local`` for a Dask
    LocalCluster on this machine, or None for a local process pool."""
    progress: bool = True
    description: str = "items"
    keep_existing: bool = False
    """Keep finished outputs even when they were made with other options
    (default: such items are recomputed)."""

    @property
    def n_workers(self) -> int:
        return max(1, self.workers or os.cpu_count() or 1)


@dataclass
class ItemResult:
    label: str
    status: Status
    value: Any = None
    error: str | None = None
    traceback: str | None = None
    seconds: float = 0.0


@dataclass
class BatchResult:
    results: list[ItemResult] = field(default_factory=list)
    seconds: float = 0.0
    recomputed: list[str] = field(default_factory=list)
    """Labels of items redone because their outputs were made with other options."""

    def _with(self, status: Status) -> list[ItemResult]:
        return [r for r in self.results if r.status == status]

    @property
    def done(self) -> list[ItemResult]:
        return self._with("done")

    @property
    def skipped(self) -> list[ItemResult]:
        return self._with("skipped")

    @property
    def failed(self) -> list[ItemResult]:
        return self._with("failed")

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        lines = [
            f"{len(self.results)} items in {self.seconds:.1f} s: {len(self.done)} done, "
            f"{len(self.skipped)} skipped (already finished), {len(self.failed)} failed"
        ]
        if self.recomputed:
            lines.append(f"{len(self.recomputed)} recomputed: options changed")
        lines += [f"  FAILED {r.label}: {r.error}" for r in self.failed]
        return "\n".join(lines)


# ------------------------------------------------------------- options on disk


def options_hash(config: Any, exclude: Iterable[str] = ("threads",)) -> str:
    """A short stable hash of the config dataclass fields that shape outputs.

    Recorded in each output's completion marker, so a re-run with other
    options recomputes instead of keeping stale results. Fields that change
    only speed (thread counts) are left out; so is the toolkit version, so a
    new release does not recompute a corpus.
    """
    values = dataclasses.asdict(config)
    for name in exclude:
        values.pop(name, None)
    doc = {"config": type(config).__name__, "fields": values}
    blob = json.dumps(doc, sort_keys=True, separators=(",", ":"), default=_canonical)
    return hashlib.sha1(blob.encode("utf-8")).hexdigest()


def _canonical(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    return str(value)  # paths, enums


def source_stamp(path: str | os.PathLike[str]) -> dict[str, int]:
    """An input's size and mtime, for its completion marker: an output of a
    file that has changed since is redone, not skipped."""
    try:
        st = os.stat(path)
    except OSError:
        return {}
    return {"source_size_bytes": st.st_size, "source_mtime_ns": st.st_mtime_ns}


def marker_fields(config: Any, stamp: dict[str, int]) -> dict[str, Any]:
    """What every completion marker records so a later run can tell whether it
    is current: the options hash, the toolkit version (kept apart from the
    hash), and the input's `source_stamp`, taken before the input was read."""
    return {"options_hash": options_hash(config), "version": __version__, **stamp}


def marker_is_current(
    marker: str | os.PathLike[str],
    expected_hash: str,
    source: str | os.PathLike[str] | None = None,
) -> bool:
    """Whether a completion marker (a JSON object) was made with these options
    and, when the marker recorded it (`source_stamp`), from `source` as it is now.

    A marker without ``options_hash`` comes from a release that did not record
    it and counts as current: upgrading must not recompute a whole corpus. An
    unreadable marker does not (the item is redone).
    """
    try:
        doc = json.loads(Path(marker).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(doc, dict):
        return False
    recorded = doc.get("options_hash")
    if recorded is not None and recorded != expected_hash:
        return False
    if source is not None and "source_mtime_ns" in doc:
        now = source_stamp(source)
        return bool(now) and all(doc.get(k) == v for k, v in now.items())
    return True


# ------------------------------------------------------------------ signals


class _Stop:
    """The batch's signal handlers, installed only while it runs (main thread).

    The first SIGINT/SIGTERM is only recorded: the batch loop polls `signum`,
    kills its workers and raises `BatchInterrupted`, so the decision and the
    clean-up happen in one place. A second signal kills the known workers
    (`force` hooks) and exits at once with the first signal's code.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.force: list[Callable[[], None]] = []
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _Stop:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is None:
            self.signum = signum
            return
        for hook in list(self.force):
            with contextlib.suppress(Exception):
                hook()
        os._exit(128 + self.signum)


def _worker_init() -> None:
    """Pool workers leave SIGINT to the main process, which decides and kills
    them; SIGTERM gets its default action back (a fork copies the parent's)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def dask_setup(worker: Any = None) -> None:
    """Dask preload hook (``preload=[this module]``): LocalCluster workers share
    the terminal's process group, and a Ctrl-C must not kill them mid-task
    with a traceback; the main process cancels and closes the cluster."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


# ------------------------------------------------------------------ the batch


def call_item(
    func: Callable[[Any], Any], item: Any, label: str, stale: Sequence[str] = ()
) -> ItemResult:
    """Run one item, turning any exception into a failed result. Runs on the worker.

    `stale` lists completion markers made with other options: they go first,
    so an item interrupted while being redone counts as unfinished.
    """
    start = time.perf_counter()
    try:
        for path in stale:
            Path(path).unlink(missing_ok=True)
        value = func(item)
    except Exception as exc:  # noqa: BLE001 - the batch must go on
        return ItemResult(
            label,
            "failed",
            error=f"{type(exc).__name__}: {exc}",
            traceback=traceback.format_exc(),
            seconds=time.perf_counter() - start,
        )
    return ItemResult(label, "done", value=value, seconds=time.perf_counter() - start)


@dataclass(frozen=True)
class _Work:
    """What the backends run: items, labels, the indices to do, stale markers."""

    func: Callable[[Any], Any]
    items: list[Any]
    labels: list[str]
    todo: list[int]
    stale: dict[int, list[str]]

    def args(self, i: int) -> tuple[Any, ...]:
        return (self.func, self.items[i], self.labels[i], self.stale.get(i, []))


def _finished_unreported(
    items: list[Any],
    results: list[ItemResult | None],
    stale: dict[int, list[str]],
    outputs: Callable[[Any], Sequence[str | os.PathLike[str]]] | None,
) -> int:
    """Items a worker finished whose result had not reached this process when
    the signal came (a Dask result in flight): their outputs exist (written
    atomically, so complete) and the next run skips them, so they count as
    finished. Stale items' old outputs do not count."""
    if outputs is None:
        return 0
    return sum(
        1
        for i, (item, result) in enumerate(zip(items, results, strict=True))
        if result is None
        and i not in stale
        and (paths := outputs(item))
        and all(Path(p).exists() for p in paths)
    )


def run_batch(
    func: Callable[[Any], Any],
    items: Iterable[Any],
    options: JobOptions = JobOptions(),
    *,
    label: Callable[[Any], str] = str,
    outputs: Callable[[Any], Sequence[str | os.PathLike[str]]] | None = None,
    current: Callable[[Any], bool] | None = None,
) -> BatchResult:
    """Apply `func` to every item; see the module docstring for the guarantees.

    `outputs(item)` lists the files an item produces. When all exist the item
    is skipped, unless `current(item)` says they were made with other options
    (and `options.keep_existing` is off): then it is redone and listed in
    `BatchResult.recomputed`. Results keep the order of `items`.

    Raises `BatchInterrupted` on SIGINT/SIGTERM (handlers installed only for
    the batch's duration, and only from the main thread).
    """
    start = time.perf_counter()
    with _Stop() as stop:
        items = list(items)
        labels = [label(it) for it in items]
        results: list[ItemResult | None] = [None] * len(items)
        todo: list[int] = []
        stale: dict[int, list[str]] = {}
        unfinished: list[Path] = []
        for i, it in enumerate(items):
            paths = [Path(p) for p in outputs(it)] if outputs else []
            if paths and all(p.exists() for p in paths):
                if options.keep_existing or current is None or current(it):
                    results[i] = ItemResult(labels[i], "skipped")
                    continue
                stale[i] = [str(p) for p in paths]
            unfinished += paths
            todo.append(i)
        # Once per batch: each output folder is listed once, however many items share it.
        remove_stale_temps(unfinished)
        work = _Work(func, items, labels, todo, stale)

        with _progress(options, len(items), len(items) - len(todo)) as advance:
            if todo and stop.signum is None:
                backend = _run_dask if options.scheduler else _run_local
                for i, res in backend(work, options, stop):
                    results[i] = res if outputs is None else _check_outputs(res, outputs(items[i]))
                    advance()
        batch = BatchResult(
            [r for r in results if r is not None],
            time.perf_counter() - start,
            [labels[i] for i in stale if results[i] is not None],
        )
        if stop.signum is not None:
            finished = sum(r.status != "failed" for r in batch.results)
            finished += _finished_unreported(items, results, stale, outputs)
            raise BatchInterrupted(stop.signum, finished, len(items), batch)
    return batch


def _check_outputs(res: ItemResult, paths: Sequence[str | os.PathLike[str]]) -> ItemResult:
    """An item a worker reports done must have left its outputs where this
    process looks for them: on a cluster without a shared file system they
    would sit on the worker's disk, and the result would be lost silently."""
    if res.status != "done":
        return res
    missing = [str(p) for p in paths if not Path(p).exists()]
    if not missing:
        return res
    return ItemResult(
        res.label,
        "failed",
        error=f"finished on its worker, but its output {missing[0]} is not here "
        "(do the workers write to a file system this machine shares?)",
        seconds=res.seconds,
    )


class _progress:
    """A rich progress bar that advances once per finished item (quiet if disabled)."""

    def __init__(self, options: JobOptions, total: int, completed: int):
        self.enabled = options.progress
        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self.task = self.bar.add_task(options.description, total=total, completed=completed)

    def __enter__(self) -> Callable[[], None]:
        if self.enabled:
            self.bar.start()
        return lambda: self.bar.advance(self.task)

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.bar.stop()


# ------------------------------------------------------------ local processes


def _new_pool(n_workers: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(max_workers=n_workers, initializer=_worker_init)


def _kill_workers(pool: ProcessPoolExecutor) -> None:
    """SIGKILL the pool's processes: a running item cannot be cancelled any
    other way, and its outputs are atomic (a killed item leaves at most a
    temporary file, removed by the next run)."""
    for proc in list((pool._processes or {}).values()):  # no public API for this
        with contextlib.suppress(Exception):
            proc.kill()


@contextlib.contextmanager
def _pool(n_workers: int, stop: _Stop) -> Iterator[ProcessPoolExecutor]:
    """A pool whose workers are killed, not waited for, unless it ends normally."""
    pool = _new_pool(n_workers)
    hook = lambda: _kill_workers(pool)  # noqa: E731
    stop.force.append(hook)
    clean = False
    try:
        yield pool
        clean = stop.signum is None
    finally:
        stop.force.remove(hook)
        if not clean:
            _kill_workers(pool)
        pool.shutdown(wait=True, cancel_futures=True)


def _run_local(work: _Work, options: JobOptions, stop: _Stop):
    """Process pool that survives a worker dying (segfault, OOM kill).

    A dead worker breaks the whole `ProcessPoolExecutor`, failing every pending
    future. The items that were in flight are then re-run one at a time in a
    fresh single-process pool, which tells the guilty item apart from the
    innocent ones; the rest of the batch continues in a new pool. After a
    stop signal nothing is re-run: the workers died because of it.
    """
    pending = deque(work.todo)
    window = 2 * options.n_workers
    while pending and stop.signum is None:
        suspects: list[int] = []
        with _pool(options.n_workers, stop) as pool:
            inflight: dict[Future, int] = {}
            while (pending or inflight) and not suspects and stop.signum is None:
                while pending and len(inflight) < window:
                    i = pending.popleft()
                    inflight[pool.submit(call_item, *work.args(i))] = i
                finished, _ = wait(inflight, timeout=POLL_S, return_when=FIRST_COMPLETED)
                for fut in finished:
                    i = inflight.pop(fut)
                    try:
                        res = fut.result()
                    except BrokenProcessPool:
                        suspects.append(i)
                        continue
                    yield i, res
            if suspects:
                suspects.extend(inflight.values())
        for i in suspects:
            res = _run_isolated(work, i, stop)
            if res is None:
                return
            yield i, res


def _run_isolated(work: _Work, i: int, stop: _Stop) -> ItemResult | None:
    """One item in its own process; None when a stop signal came first."""
    with _pool(1, stop) as pool:
        fut = pool.submit(call_item, *work.args(i))
        while stop.signum is None:
            if not wait([fut], timeout=POLL_S).done:
                continue
            try:
                return fut.result()
            except BrokenProcessPool:
                return ItemResult(
                    work.labels[i],
                    "failed",
                    error="worker process died while processing this item "
                    "(crash, out-of-memory kill or signal)",
                )
    return None


# ---------------------------------------------------------------------- Dask


def _run_dask(work: _Work, options: JobOptions, stop: _Stop):
    """Items as Dask futures; on a stop signal they are cancelled and the
    client (and a LocalCluster's worker processes) closed at once."""
    from dask.distributed import Client, LocalCluster, as_completed
    from distributed.scheduler import KilledWorker

    cluster = None
    if options.scheduler == "local":
        cluster = LocalCluster(
            n_workers=options.n_workers,
            threads_per_worker=1,
            processes=True,
            # a private cluster: loopback only, and a free port for the HTTP
            # server the scheduler always runs (None would take 8787)
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
            preload=[__name__],  # `dask_setup`: workers ignore Ctrl-C
        )
        stop.force.append(lambda: _kill_cluster_workers(cluster))
        client = Client(cluster)
    else:
        client = Client(options.scheduler)
    futures: dict[Any, int] = {}
    try:
        futures = {client.submit(call_item, *work.args(i), pure=False): i for i in work.todo}
        queue = as_completed(futures)
        while stop.signum is None:
            batch = queue.next_batch(block=False)
            if not batch:
                if queue.is_empty():
                    break
                with queue.thread_condition:
                    queue.thread_condition.wait(timeout=POLL_S)
                continue
            for fut in batch:
                i = futures[fut]
                yield i, _dask_result(fut, work.labels[i], KilledWorker)
    finally:
        # Stopped: "Removing worker ... lost computed tasks", a closed comm's
        # traceback and the like are expected while the workers die.
        with _quiet_distributed() if stop.signum is not None else contextlib.nullcontext():
            if stop.signum is not None:
                if cluster is not None:
                    _stop_cluster_workers(cluster)  # their tasks die with them
                else:  # a shared cluster: its workers finish their running task
                    with contextlib.suppress(Exception):
                        client.cancel(list(futures), force=True)
            with contextlib.suppress(Exception):
                client.close(timeout=2 if stop.signum else None)
            if cluster is not None:
                with contextlib.suppress(Exception):
                    cluster.close(timeout=2 if stop.signum else None)
        stop.force.clear()


@contextlib.contextmanager
def _quiet_distributed() -> Iterator[None]:
    """Dask's own loggers at ERROR for the duration."""
    quiet = logging.getLogger("distributed")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        yield
    finally:
        quiet.setLevel(level)


def _dask_result(fut: Any, label: str, killed: type[Exception]) -> ItemResult:
    try:
        return fut.result()
    except killed:
        return ItemResult(label, "failed", error="Dask worker died while processing this item")
    except Exception as exc:  # noqa: BLE001 - e.g. a result that cannot be unpickled
        return ItemResult(label, "failed", error=f"{type(exc).__name__}: {exc}")


def _stop_cluster_workers(cluster: Any, timeout: float = 1.0) -> None:
    """Kill a LocalCluster's workers at once and close their nannies (Dask
    cannot stop a running task, and a graceful close waits for it: a DWI
    series takes ~40 s). Each nanny is put in its closing state first, so it
    does not restart the worker it then sees die."""

    async def close_all() -> None:
        nannies = list(cluster.workers.values())
        closing = [
            asyncio.ensure_future(n.close(timeout=timeout, reason="batch-interrupted"))
            for n in nannies
        ]
        await asyncio.sleep(0)  # every close has started: status "closing", no restart
        _kill_cluster_workers(cluster)
        await asyncio.gather(*closing, return_exceptions=True)

    with _quiet_distributed(), contextlib.suppress(Exception):
        cluster.sync(close_all, callback_timeout=3 * timeout)


def _kill_cluster_workers(cluster: Any) -> None:
    """SIGKILL a LocalCluster's worker processes: Dask cannot stop a running
    task, and a graceful close waits for it (a DWI series takes ~40 s)."""
    for nanny in list(getattr(cluster, "workers", {}).values()):
        worker = getattr(nanny, "process", None)  # a Nanny's WorkerProcess
        pid = getattr(getattr(worker, "process", None), "pid", None)
        if pid:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
