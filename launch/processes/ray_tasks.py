"""One function over many tasks as Ray tasks, at most `num_workers` in flight, with a progress
bar: how `vitpipe shard` writes shards and indexes users' shards. Results come back in task
order whatever order they finish in; the first failure cancels what is still pending.

`stoppable_ray()` is the Ray such a stage runs in: SIGTERM or Ctrl-C asks it to stop (no new
task starts, the ones in flight finish and keep their work, `run_bounded` raises `Stopped`),
a second signal aborts. Ours is installed after Ray's own handler, which would dump a C++ stack
and leave the driver's Ray processes behind.
"""

from __future__ import annotations

import contextlib
import signal
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from launch.processes.ray_cluster import ray_session
from pipelines.config import ClusterSection
from pipelines.errors import DataError, VitpipeError
from pipelines.train.stop import StopRequest

T = TypeVar("T")
R = TypeVar("R")


class Stopped(Exception):
    """A stop was requested: the tasks that were in flight finished, the rest never started."""

    def __init__(self, done: int, total: int):
        super().__init__(f"stopped after {done} of {total} tasks")
        self.done, self.total = done, total


@contextlib.contextmanager
def stoppable_ray(cluster: ClusterSection) -> Iterator[StopRequest]:
    """Ray for the duration of a stage, with SIGTERM and SIGINT as a request to stop."""
    stop = StopRequest()
    with ray_session(cluster), stop.on_signals(signal.SIGTERM, signal.SIGINT):
        yield stop


def run_bounded(
    fn: Callable[[Any, T], R],
    shared: Any,
    tasks: Sequence[T],
    *,
    num_workers: int,
    what: Callable[[T], str],
    on_result: Callable[[T, R], None] = lambda task, result: None,
    stop: StopRequest | None = None,
) -> list[R]:
    """`fn(shared, task)` for every task on Ray (`shared` is put in the object store once).
    A task's VitpipeError is raised as it is; anything else becomes a DataError naming
    `what(task)`. Once `stop` is requested no task starts; `Stopped` is raised when the ones
    in flight have finished."""
    import ray
    from ray.exceptions import RayTaskError

    remote = ray.remote(num_cpus=1)(fn)
    shared_ref = ray.put(shared)
    queue = deque(range(len(tasks)))
    pending: dict[Any, int] = {}
    results: dict[int, R] = {}
    try:
        while True:
            if stop is not None and stop.signalled():
                queue.clear()
            while queue and len(pending) < num_workers:
                index = queue.popleft()
                pending[remote.remote(shared_ref, tasks[index])] = index
            if not pending:
                break
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                index = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except RayTaskError as err:
                    cause = getattr(err, "cause", None)
                    if isinstance(cause, VitpipeError):
                        raise cause from None
                    raise DataError(
                        f"{what(tasks[index])} failed: {type(cause).__name__}: {cause}"
                    ) from None
                results[index] = result
                on_result(tasks[index], result)
    except BaseException:
        for ref in pending:
            ray.cancel(ref)
        raise
    if len(results) < len(tasks):
        raise Stopped(len(results), len(tasks))
    return [results[i] for i in range(len(tasks))]


@contextlib.contextmanager
def task_progress(
    enabled: bool, label: str, total: int, counters: dict[str, float], text: str
) -> Iterator[Callable[..., None]]:
    """A rich progress bar on stderr over `total` tasks, showing `counters` through `text`
    (e.g. "shards  {task.fields[images]} images"); yields `advance(**increments)`."""
    if not enabled:
        yield lambda **increments: None
        return
    progress = Progress(
        TextColumn(f"[bold]{label}[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(text),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )
    counts = dict(counters)
    bar = progress.add_task(label, total=total, **counts)

    def advance(**increments: float) -> None:
        for key, value in increments.items():
            counts[key] += value
        progress.update(bar, advance=1, **counts)

    with progress:
        yield advance
