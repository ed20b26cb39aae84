"""`vitpipe shard` on Ray: index the source and plan on the driver, write shards in Ray tasks
(at most `shard.num_workers` in flight), then write `rejected.parquet` and `manifest.json`
into the output directory; the stage lifecycle writes `summary.json` there too.

The work itself lives in `pipelines.data.shard_set` and `pipelines.data.shard_writer` (no
Ray); this module only schedules it. Output bytes do not depend on the number of workers; a re-run skips every shard whose file
is complete and verified; `manifest.json` is written last (and an older one that no longer
matches the plan is removed first), so a crashed run never leaves a manifest pointing at shards
that are not what it says.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from launch.processes.ray_tasks import Stopped, run_bounded, stoppable_ray, task_progress
from launch.stages.lifecycle import stage_run
from launch.stages.shard_index import format_index_summary, index_shards, stopped_fields
from pipelines.config import ShardSection, StageConfig
from pipelines.data import shard_set
from pipelines.data.manifest import MANIFEST_NAME, split_counts
from pipelines.data.rejects import count_reasons
from pipelines.data.shard_writer import ShardResult, ShardWriteSettings, write_shard
from pipelines.data.write_plan import ShardTask
from pipelines.errors import ConfigError, VitpipeError
from pipelines.storage import locate
from pipelines.tracking.run_params import run_params
from pipelines.train.stop import StopRequest


def run_shard(
    config: StageConfig,
    progress: bool = True,
    *,
    parent_run_id: str | None = None,
    rehash: bool | Collection[str] = False,
) -> dict[str, Any]:
    """Turn `config.shard.source` into WebDataset shards; returns the summary (also written to
    `<output>/summary.json` by the stage lifecycle). Paths in `config` are absolute (the CLI
    resolves them). Uses the Ray that is already initialised, else `config.cluster`.
    `rehash`: users' shards to index again even if they look unchanged (True: all); written
    shards are always verified by their hash, so it changes nothing there.
    SIGTERM or Ctrl-C stops it cleanly (status `stopped`; a re-run continues)."""
    if config.shard is None:
        raise ConfigError("shard: the config has no `shard:` section; `vitpipe shard` needs one")
    section = config.shard
    if not section.output:
        raise ConfigError("shard.output is not set; give it a directory or URI for the shards")
    with stage_run(
        "shard",
        run_dir=section.output,
        tracking=config.tracking,
        run_name=config.stage_run_name("shard"),
        parent_run_id=parent_run_id,
        params=run_params({"shard": section.model_dump(mode="json")}, stage="shard"),
    ) as run:
        if section.source.kind == "webdataset":  # index users' own shards in place
            run.summary.update(index_shards(config, progress, rehash))
        else:
            run.summary.update(_write_shards(config, section, progress))
        if run.run_dir.is_local and run.summary.get("status") != "stopped":
            run.artifacts.append(Path(run.run_dir.join(MANIFEST_NAME).path))
    return run.summary


def _write_shards(config: StageConfig, section: ShardSection, progress: bool) -> dict[str, Any]:
    job, plan = shard_set.prepare(section)
    shard_set.begin(job.output, plan)
    with stoppable_ray(config.cluster) as stop:
        write_started = time.perf_counter()  # Ray start-up excluded
        try:
            results = _run_tasks(job, plan.shards, section.num_workers, progress, stop)
        except Stopped as stopped:
            return stopped_fields(stopped, job.output.uri, section.num_workers)
        write_elapsed = time.perf_counter() - write_started
    manifest, rejected = shard_set.finish(job, plan, results, section)

    written = [r for r in results if not r.skipped]
    inputs_done = sum(r.samples + len(r.rejected) for r in written)  # rejects cost time too
    splits = manifest.splits
    return {
        "output": job.output.uri,
        "manifest": job.output.join(MANIFEST_NAME).uri,
        "num_samples": sum(s.num_samples for s in splits.values()),
        "num_shards": sum(len(s.shards) for s in splits.values()),
        "num_shards_written": len(written),
        "num_shards_skipped": len(results) - len(written),
        "num_rejected": len(rejected),
        "rejected_by_reason": count_reasons(rejected),
        "num_classes": len(plan.classes),
        "splits": split_counts(manifest),
        "images_per_sec": round(inputs_done / write_elapsed, 2) if written else 0.0,
        "write_elapsed_s": round(write_elapsed, 3),
        "task_cpu_s": round(sum(r.cpu_s for r in written), 3),
        "num_workers": section.num_workers,
    }


def format_summary(summary: dict[str, Any]) -> str:
    """The one line `vitpipe shard` prints at the end."""
    if summary.get("status") == "stopped":
        return (
            f"shard: stopped after {summary['num_shards_done']} of "
            f"{summary['num_shards_planned']} shards; run the same command again to continue "
            f"(no manifest yet) -> {summary['output']}"
        )
    if summary.get("mode") == "index":
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
    job: ShardWriteSettings,
    tasks: Sequence[ShardTask],
    num_workers: int,
    show_progress: bool,
    stop: StopRequest,
) -> list[ShardResult]:
    counters = {"images": 0, "skipped": 0}
    text = "shards  {task.fields[images]} images  {task.fields[skipped]} skipped"
    with task_progress(show_progress, "shard", len(tasks), counters, text) as advance:
        return run_bounded(
            write_shard,
            job,
            tasks,
            num_workers=num_workers,
            what=lambda task: f"writing {task.name}",
            on_result=lambda task, result: advance(
                images=len(task.refs), skipped=int(result.skipped)
            ),
            stop=stop,
        )


def ensure_shards(
    config: StageConfig, *, parent_run_id: str | None = None, progress: bool = True
) -> dict[str, Any] | None:
    """Shard first when the config says how (`shard:`) and `data.train_shards` has no manifest
    yet, so `vitpipe pretrain -c CONFIG` works from a fresh checkout. Returns the shard summary."""
    if config.shard is None or not config.shard.output or not config.data.train_shards:
        return None
    output = locate(config.shard.output)
    pending = [
        source.shards
        for source in config.data.train_sources
        if locate(source.shards).uri == output.uri and not output.join(MANIFEST_NAME).is_file()
    ]
    if not pending:
        return None
    summary = run_shard(config, progress=progress, parent_run_id=parent_run_id)
    print(format_summary(summary))
    if summary.get("status") == "stopped":
        raise VitpipeError("stopped while sharding, before training; run it again to continue")
    return summary
