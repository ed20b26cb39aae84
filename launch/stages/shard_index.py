"""`vitpipe shard` with `shard.source.kind: webdataset`: index users' own WebDataset shards in
place as Ray tasks (at most `shard.num_workers` in flight), then write `rejected.parquet` and
`manifest.json` (format 2, pointing at the shards where they are) into `shard.output` (the
stage lifecycle writes `summary.json` beside them). The work itself is `pipelines.data.wds_index` (no Ray); this module schedules it
and shows progress.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from typing import Any

from launch.processes.ray_tasks import Stopped, run_bounded, stoppable_ray, task_progress
from pipelines.config import StageConfig
from pipelines.data import wds_index
from pipelines.data.manifest import MANIFEST_NAME, split_counts
from pipelines.data.rejects import count_reasons
from pipelines.train.stop import StopRequest

SUMMARY_NAME = "summary.json"
SHOWN_MISSING = 3  # missing shards the summary line names (rejected.parquet lists them all)


def index_shards(
    config: StageConfig, progress: bool = True, rehash: bool | Collection[str] = False
) -> dict[str, Any]:
    """Index `config.shard.source.urls` (and `val_urls`); returns the stage's summary fields
    (`run_shard` runs this inside the stage lifecycle). Uses the Ray that is already
    initialised, else `config.cluster`. `rehash`: shards to read even if they look unchanged
    (True: all)."""
    section = config.shard
    plan = wds_index.plan_index(section, config.data.max_member_bytes, rehash)
    plan.job.output.makedirs()
    with stoppable_ray(config.cluster) as stop:
        index_started = time.perf_counter()  # Ray start-up excluded
        try:
            results = _run_tasks(plan.job, plan.tasks, section.num_workers, progress, stop)
        except Stopped as stopped:
            return stopped_fields(stopped, plan.job.output.uri, section.num_workers)
        index_elapsed = time.perf_counter() - index_started
    manifest, rejected = wds_index.finish_index(plan, results)
    missing = sorted(r.source_id for r in rejected if r.reason == "file_missing" and not r.key)
    read = [r for r in results if not r.skipped]
    read_bytes = sum(r.bytes for r in read)
    splits = manifest.splits
    return {
        "mode": "index",
        "output": plan.job.output.uri,
        "manifest": plan.job.output.join(MANIFEST_NAME).uri,
        "shards_root": plan.roots,
        "num_samples": sum(s.num_samples for s in splits.values()),
        "num_shards": sum(len(s.shards) for s in splits.values()),
        "num_shards_read": len(read),
        "num_shards_skipped": len(results) - len(read),
        "num_rejected": sum(1 for r in rejected if r.key),
        "num_shards_missing": len(missing),
        "missing_shards": missing[:SHOWN_MISSING],
        "rejected_by_reason": count_reasons(rejected),
        "num_classes": manifest.num_classes,
        "splits": split_counts(manifest),
        "bytes_read": read_bytes,
        "mb_per_sec": round(read_bytes / 2**20 / index_elapsed, 2) if read else 0.0,
        "index_elapsed_s": round(index_elapsed, 3),
        "num_workers": section.num_workers,
    }


def stopped_fields(stopped: Stopped, output: str, num_workers: int) -> dict[str, Any]:
    """The summary of a shard stage stopped by a signal: what was done is kept (a re-run skips
    it); no manifest is written."""
    return {
        "status": "stopped",
        "output": output,
        "num_shards_done": stopped.done,
        "num_shards_planned": stopped.total,
        "num_workers": num_workers,
    }


def format_index_summary(summary: dict[str, Any]) -> str:
    """The one line `vitpipe shard` prints at the end of an index run."""
    splits = ", ".join(f"{k} {v['num_samples']}" for k, v in summary["splits"].items())
    missing = ""
    if summary["num_shards_missing"]:
        names = ", ".join(summary["missing_shards"])
        more = ", ..." if summary["num_shards_missing"] > len(summary["missing_shards"]) else ""
        missing = (
            f", {summary['num_shards_missing']} shards missing ({names}{more}; all in "
            "rejected.parquet)"
        )
    return (
        f"shard (index in place): {summary['num_samples']} samples ({splits}) in "
        f"{summary['num_shards']} shards, {summary['num_classes']} classes, "
        f"{summary['num_rejected']} samples rejected{missing}; "
        f"{summary['num_shards_read']} shards read, "
        f"{summary['num_shards_skipped']} unchanged; {summary['mb_per_sec']:.0f} MB/s with "
        f"{summary['num_workers']} workers, {summary['elapsed_s']:.1f} s -> {summary['manifest']}"
    )


def _run_tasks(
    job: wds_index.IndexSettings,
    tasks: Sequence[wds_index.IndexTask],
    num_workers: int,
    show_progress: bool,
    stop: StopRequest,
) -> list[wds_index.ShardIndex]:
    counters = {"samples": 0, "mb": 0.0}
    text = "shards  {task.fields[samples]} samples  {task.fields[mb]:.0f} MB read"
    with task_progress(show_progress, "index", len(tasks), counters, text) as advance:
        return run_bounded(
            wds_index.index_shard,
            job,
            tasks,
            num_workers=num_workers,
            what=lambda task: f"indexing {task.name}",
            on_result=lambda task, result: advance(
                samples=result.samples, mb=0 if result.skipped else result.bytes / 2**20
            ),
            stop=stop,
        )
