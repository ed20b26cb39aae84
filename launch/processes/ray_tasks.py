"""One function over many tasks as Ray tasks, at most `num_workers` in flight, with a progress
bar: how `vitpipe shard` writes shards and indexes users' shards. Results come back in task
order whatever order they finish in; the first failure cancels what is still pending."""

from __future__ import annotations

import contextlib
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

from pipelines.errors import DataError, VitpipeError

T = TypeVar("T")
R = TypeVar("R")


def run_bounded(
    fn: Callable[[Any, T], R],
    shared: Any,
    tasks: Sequence[T],
    *,
    num_workers: int,
    what: Callable[[T], str],
    on_result: Callable[[T, R], None] = lambda task, result: None,
) -> list[R]:
    """`fn(shared, task)` for every task on Ray (`shared` is put in the object store once).
    A task's VitpipeError is raised as it is; anything else becomes a DataError naming
    `what(task)`."""
    import ray
    from ray.exceptions import RayTaskError

    remote = ray.remote(num_cpus=1)(fn)
    shared_ref = ray.put(shared)
    queue = deque(range(len(tasks)))
    pending: dict[Any, int] = {}
    results: dict[int, R] = {}
    try:
        while queue or pending:
            while queue and len(pending) < num_workers:
                index = queue.popleft()
                pending[remote.remote(shared_ref, tasks[index])] = index
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
