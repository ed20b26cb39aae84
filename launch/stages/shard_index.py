"""`vitpipe shard` with `shard.source.kind: webdataset`: index users' own WebDataset shards in
place as Ray tasks (at most `shard.num_workers` in flight), then write `rejected.parquet`,
`manifest.json` (format 2, pointing at the shards where they are) and `summary.json` into
`shard.output`. The work itself is `pipelines.data.wds_index` (no Ray); this module schedules it
and shows progress.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from launch.ray_cluster import ray_session
from pipelines.config import JobConfig
from pipelines.config.paths import with_absolute_paths
from pipelines.data import wds_index
from pipelines.data.manifest import MANIFEST_NAME
from pipelines.data.rejects import count_reasons
from pipelines.errors import DataError, VitpipeError

SUMMARY_NAME = "summary.json"


def run_index(config: JobConfig, progress: bool = True) -> dict[str, Any]:
    """Index `config.shard.source.urls` (and `val_urls`); returns the summary (also written to
    `<output>/summary.json`). Uses the Ray that is already initialised, else `config.cluster`."""
    section = with_absolute_paths(config).shard
    started = time.perf_counter()
    plan = wds_index.plan_index(section, config.data.max_member_bytes)
    plan.job.output.makedirs()
    with ray_session(config.cluster):
        index_started = time.perf_counter()  # Ray start-up excluded
        results = _run_tasks(plan.job, plan.tasks, section.num_workers, progress)
        index_elapsed = time.perf_counter() - index_started
    manifest, rejected = wds_index.finish_index(plan, results)
    read = [r for r in results if not r.skipped]
    read_bytes = sum(r.bytes for r in read)
    splits = manifest.splits
    summary = {
        "stage": "shard",
        "status": "ok",
        "mode": "index",
        "output": plan.job.output.uri,
        "manifest": plan.job.output.join(MANIFEST_NAME).uri,
        "shards_root": plan.roots,
        "num_samples": sum(s.num_samples for s in splits.values()),
        "num_shards": sum(len(s.shards) for s in splits.values()),
        "num_shards_read": len(read),
        "num_shards_skipped": len(results) - len(read),
        "num_rejected": sum(1 for r in rejected if r.key),
        "rejected_by_reason": count_reasons(rejected),
        "num_classes": manifest.num_classes,
        "splits": {
            name: {"num_samples": info.num_samples, "num_shards": len(info.shards)}
            for name, info in splits.items()
        },
        "bytes_read": read_bytes,
        "mb_per_sec": round(read_bytes / 2**20 / index_elapsed, 2) if read else 0.0,
        "elapsed_s": round(time.perf_counter() - started, 3),
        "index_elapsed_s": round(index_elapsed, 3),
        "num_workers": section.num_workers,
    }
    data = (json.dumps(summary, indent=2) + "\n").encode()
    plan.job.output.join(SUMMARY_NAME).write_bytes_atomic(data)
    return summary


def format_index_summary(summary: dict[str, Any]) -> str:
    """The one line `vitpipe shard` prints at the end of an index run."""
    splits = ", ".join(f"{k} {v['num_samples']}" for k, v in summary["splits"].items())
    return (
        f"shard (index in place): {summary['num_samples']} samples ({splits}) in "
        f"{summary['num_shards']} shards, {summary['num_classes']} classes, "
        f"{summary['num_rejected']} samples rejected; {summary['num_shards_read']} shards read, "
        f"{summary['num_shards_skipped']} unchanged; {summary['mb_per_sec']:.0f} MB/s with "
        f"{summary['num_workers']} workers, {summary['elapsed_s']:.1f} s -> {summary['manifest']}"
    )


def _run_tasks(
    job: wds_index.IndexJob,
    tasks: Sequence[wds_index.IndexTask],
    num_workers: int,
    show_progress: bool,
) -> list[wds_index.ShardIndex]:
    import ray
    from ray.exceptions import RayTaskError

    remote = ray.remote(num_cpus=1)(wds_index.index_shard)
    job_ref = ray.put(job)
    queue = deque(tasks)
    pending: dict[Any, wds_index.IndexTask] = {}
    results = []
    with _progress(show_progress, len(tasks)) as advance:
        try:
            while queue or pending:
                while queue and len(pending) < num_workers:
                    task = queue.popleft()
                    pending[remote.remote(job_ref, task)] = task
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    task = pending.pop(ref)
                    try:
                        result = ray.get(ref)
                    except RayTaskError as err:
                        cause = getattr(err, "cause", None)
                        if isinstance(cause, VitpipeError):
                            raise cause from None
                        raise DataError(
                            f"indexing {task.name} failed: {type(cause).__name__}: {cause}"
                        ) from None
                    results.append(result)
                    advance(result)
        except BaseException:
            for ref in pending:
                ray.cancel(ref)
            raise
    order = {(t.split, t.name): i for i, t in enumerate(tasks)}
    return sorted(results, key=lambda r: order[(r.split, r.name)])


@contextmanager
def _progress(enabled: bool, num_shards: int) -> Iterator[Any]:
    """A rich progress bar on stderr: shards, samples, MB read; yields `advance(result)`."""
    if not enabled:
        yield lambda result: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    progress = Progress(
        TextColumn("[bold]index[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("shards  {task.fields[samples]} samples  {task.fields[mb]:.0f} MB read"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )
    bar = progress.add_task("index", total=num_shards, samples=0, mb=0.0)
    counts = {"samples": 0, "mb": 0.0}

    def advance(result: wds_index.ShardIndex) -> None:
        counts["samples"] += result.samples
        counts["mb"] += 0 if result.skipped else result.bytes / 2**20
        progress.update(bar, advance=1, **counts)

    with progress:
        yield advance
