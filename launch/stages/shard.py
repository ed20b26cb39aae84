"""`vitpipe shard` on Ray: index the source and plan on the driver, write shards in Ray tasks
(at most `shard.num_workers` in flight), then write `rejected.parquet`, `manifest.json` and
`summary.json` into the output directory.

The work itself lives in `pipelines.data.shard_set` and `pipelines.data.shard_writer` (no
Ray); this module only schedules it. Output bytes do not depend on the number of workers; a re-run skips every shard whose file
is complete and verified; `manifest.json` is written last (and an older one that no longer
matches the plan is removed first), so a crashed run never leaves a manifest pointing at shards
that are not what it says.
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
from pipelines.data import shard_set
from pipelines.data.manifest import MANIFEST_NAME
from pipelines.data.rejects import count_reasons
from pipelines.data.shard_writer import ShardJob, ShardResult, write_shard
from pipelines.data.write_plan import ShardTask
from pipelines.errors import ConfigError, DataError, VitpipeError
from pipelines.storage import locate

SUMMARY_NAME = "summary.json"


def run_shard(config: JobConfig, progress: bool = True) -> dict[str, Any]:
    """Turn `config.shard.source` into WebDataset shards; returns the summary (also written to
    `<output>/summary.json`). Uses the Ray that is already initialised, else `config.cluster`."""
    if config.shard is None:
        raise ConfigError("shard: the config has no `shard:` section; `vitpipe shard` needs one")
    if config.shard.source.kind == "webdataset":  # index users' own shards in place
        from launch.stages.shard_index import run_index

        return run_index(config, progress)
    section = with_absolute_paths(config).shard
    started = time.perf_counter()
    job, plan = shard_set.prepare(section)
    shard_set.begin(job.output, plan)
    with ray_session(config.cluster):
        write_started = time.perf_counter()  # Ray start-up excluded
        results = _run_tasks(job, plan.shards, section.num_workers, progress)
        write_elapsed = time.perf_counter() - write_started
    manifest, rejected = shard_set.finish(job, plan, results, section)

    written = [r for r in results if not r.skipped]
    inputs_done = sum(r.samples + len(r.rejected) for r in written)  # rejects cost time too
    splits = manifest.splits
    summary = {
        "stage": "shard",
        "status": "ok",
        "output": job.output.uri,
        "manifest": job.output.join(MANIFEST_NAME).uri,
        "num_samples": sum(s.num_samples for s in splits.values()),
        "num_shards": sum(len(s.shards) for s in splits.values()),
        "num_shards_written": len(written),
        "num_shards_skipped": len(results) - len(written),
        "num_rejected": len(rejected),
        "rejected_by_reason": count_reasons(rejected),
        "num_classes": len(plan.classes),
        "splits": {
            name: {"num_samples": info.num_samples, "num_shards": len(info.shards)}
            for name, info in splits.items()
        },
        "images_per_sec": round(inputs_done / write_elapsed, 2) if written else 0.0,
        "elapsed_s": round(time.perf_counter() - started, 3),
        "write_elapsed_s": round(write_elapsed, 3),
        "task_cpu_s": round(sum(r.cpu_s for r in written), 3),
        "num_workers": section.num_workers,
    }
    data = (json.dumps(summary, indent=2) + "\n").encode()
    job.output.join(SUMMARY_NAME).write_bytes_atomic(data)
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """The one line `vitpipe shard` prints at the end."""
    if summary.get("mode") == "index":
        from launch.stages.shard_index import format_index_summary

        return format_index_summary(summary)
    splits = ", ".join(f"{k} {v['num_samples']}" for k, v in summary["splits"].items())
    return (
        f"shard: {summary['num_samples']} samples ({splits}) in {summary['num_shards']} shards, "
        f"{summary['num_classes']} classes, {summary['num_rejected']} rejected; "
        f"{summary['num_shards_written']} shards written, {summary['num_shards_skipped']} "
        f"skipped; {summary['images_per_sec']:.0f} images/s with {summary['num_workers']} "
        f"workers, {summary['elapsed_s']:.1f} s -> {summary['output']}"
    )


def _run_tasks(
    job: ShardJob, tasks: Sequence[ShardTask], num_workers: int, show_progress: bool
) -> list[ShardResult]:
    import ray
    from ray.exceptions import RayTaskError

    remote = ray.remote(num_cpus=1)(write_shard)
    job_ref = ray.put(job)
    queue = deque(tasks)
    pending: dict[Any, ShardTask] = {}
    results: list[ShardResult] = []
    total_samples = sum(len(t.refs) for t in tasks)
    with _progress(show_progress, len(tasks), total_samples) as advance:
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
                            f"writing {task.name} failed: {type(cause).__name__}: {cause}"
                        ) from None
                    results.append(result)
                    advance(result, len(task.refs))
        except BaseException:
            for ref in pending:
                ray.cancel(ref)
            raise
    order = {(t.split, t.number): i for i, t in enumerate(tasks)}
    return sorted(results, key=lambda r: order[(r.split, r.number)])


@contextmanager
def _progress(enabled: bool, num_shards: int, num_samples: int) -> Iterator[Any]:
    """A rich progress bar on stderr; yields `advance(result, planned_samples)`."""
    if not enabled:
        yield lambda result, planned: None
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
        TextColumn("[bold]shard[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("shards  {task.fields[images]} images  {task.fields[skipped]} skipped"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )
    bar = progress.add_task("shard", total=num_shards, images=0, skipped=0)
    counts = {"images": 0, "skipped": 0}

    def advance(result: ShardResult, planned: int) -> None:
        counts["images"] += planned
        counts["skipped"] += int(result.skipped)
        progress.update(bar, advance=1, images=counts["images"], skipped=counts["skipped"])

    with progress:
        yield advance


def ensure_shards(config: JobConfig, progress: bool = True) -> dict[str, Any] | None:
    """Shard first when the config says how (`shard:`) and `data.train_shards` has no manifest
    yet, so `vitpipe pretrain -c CONFIG` works from a fresh checkout. Returns the shard summary."""
    if config.shard is None:
        return None
    config = with_absolute_paths(config)
    if locate(config.data.train_shards).join(MANIFEST_NAME).is_file():
        return None
    if locate(config.shard.output).uri != locate(config.data.train_shards).uri:
        return None
    summary = run_shard(config, progress=progress)
    print(format_summary(summary))
    return summary
