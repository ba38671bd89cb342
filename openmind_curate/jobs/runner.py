"""Map a function over items on a local process pool or a Dask cluster.

Guarantees every batch command relies on:

- one failing item never stops the batch: its exception (or its worker's
  death) becomes an `ItemResult` with the item's label and the reason;
- an item whose outputs all exist is skipped, so a killed job resumes where it
  stopped (outputs are written atomically, see `atomic`, so "exists" means
  "complete"); temporary files a killed run left behind are removed first;
- a progress bar on long work.

The function and items must be picklable (module-level functions).
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
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

from openmind_curate.jobs.atomic import remove_stale_temps

Status = Literal["done", "skipped", "failed"]


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
        lines += [f"  FAILED {r.label}: {r.error}" for r in self.failed]
        return "\n".join(lines)


def call_item(func: Callable[[Any], Any], item: Any, label: str) -> ItemResult:
    """Run one item, turning any exception into a failed result. Runs on the worker."""
    start = time.perf_counter()
    try:
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


def run_batch(
    func: Callable[[Any], Any],
    items: Iterable[Any],
    options: JobOptions = JobOptions(),
    *,
    label: Callable[[Any], str] = str,
    outputs: Callable[[Any], Sequence[str | os.PathLike[str]]] | None = None,
) -> BatchResult:
    """Apply `func` to every item; see the module docstring for the guarantees.

    `outputs(item)` lists the files an item produces. When all exist the item
    is skipped. Results keep the order of `items`.
    """
    start = time.perf_counter()
    items = list(items)
    labels = [label(it) for it in items]
    results: list[ItemResult | None] = [None] * len(items)
    todo: list[int] = []
    unfinished: list[Path] = []
    for i, it in enumerate(items):
        paths = [Path(p) for p in outputs(it)] if outputs else []
        if paths and all(p.exists() for p in paths):
            results[i] = ItemResult(labels[i], "skipped")
        else:
            unfinished += paths
            todo.append(i)
    # Once per batch: each output folder is listed once, however many items share it.
    remove_stale_temps(unfinished)

    with _progress(options, len(items), len(items) - len(todo)) as advance:
        if todo:
            backend = _run_dask if options.scheduler else _run_local
            for i, res in backend(func, items, labels, todo, options):
                results[i] = res
                advance()
    return BatchResult([r for r in results if r is not None], time.perf_counter() - start)


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


def _run_local(func, items, labels, todo, options):
    """Process pool that survives a worker dying (segfault, OOM kill).

    A dead worker breaks the whole `ProcessPoolExecutor`, failing every pending
    future. The items that were in flight are then re-run one at a time in a
    fresh single-process pool, which tells the guilty item apart from the
    innocent ones; the rest of the batch continues in a new pool.
    """
    pending = list(todo)
    suspects: list[int] = []
    while pending:
        with ProcessPoolExecutor(max_workers=options.n_workers) as pool:
            window = 2 * options.n_workers
            inflight: dict[Future, int] = {}
            broken = False
            while (pending or inflight) and not broken:
                while pending and len(inflight) < window:
                    i = pending.pop(0)
                    inflight[pool.submit(call_item, func, items[i], labels[i])] = i
                finished, _ = wait(inflight, return_when=FIRST_COMPLETED)
                for fut in finished:
                    i = inflight.pop(fut)
                    try:
                        yield i, fut.result()
                    except BrokenProcessPool:
                        suspects.append(i)
                        broken = True
            if broken:
                suspects.extend(inflight.values())
                pool.shutdown(wait=False, cancel_futures=True)
        for i in suspects:
            yield i, _run_isolated(func, items[i], labels[i])
        suspects.clear()


def _run_isolated(func, item, label) -> ItemResult:
    with ProcessPoolExecutor(max_workers=1) as pool:
        try:
            return pool.submit(call_item, func, item, label).result()
        except BrokenProcessPool:
            return ItemResult(
                label,
                "failed",
                error="worker process died while processing this item "
                "(crash, out-of-memory kill or signal)",
            )


def _run_dask(func, items, labels, todo, options):
    from dask.distributed import Client, LocalCluster, as_completed
    from distributed.scheduler import KilledWorker

    cluster = None
    if options.scheduler == "local":
        cluster = LocalCluster(
            n_workers=options.n_workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
        )
        client = Client(cluster)
    else:
        client = Client(options.scheduler)
    try:
        futures = {client.submit(call_item, func, items[i], labels[i], pure=False): i for i in todo}
        for fut in as_completed(futures):
            i = futures[fut]
            try:
                yield i, fut.result()
            except KilledWorker:
                yield (
                    i,
                    ItemResult(
                        labels[i], "failed", error="Dask worker died while processing this item"
                    ),
                )
            except Exception as exc:  # noqa: BLE001 - e.g. a result that cannot be unpickled
                yield i, ItemResult(labels[i], "failed", error=f"{type(exc).__name__}: {exc}")
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
