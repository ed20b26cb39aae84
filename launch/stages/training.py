"""The training stage (pretrain, finetune): run dir, launch, the driver's side of checkpoints.

The driver decides before any worker starts whether the run resumes and from which checkpoint
(`plan_launch`: wrong model or teacher, a missing or unsafe checkpoint, a run dir in use: one
line, nothing started) and hands that choice to the workers in the request; it writes the
resolved configs, and runs the workers inside the stage lifecycle, which owns the MLflow run
(continued when resuming) and summary.json. Rank 0 logs metrics into that run while training.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from launch.processes import launchers
from launch.processes.ray_cluster import ray_session
from launch.stages.lifecycle import StageRun, stage_run
from launch.stages.shard import ensure_shards
from launch.terminal.progress import MetricsProgress
from pipelines.config import StageConfig, dump_config
from pipelines.data.manifest import MANIFEST_NAME
from pipelines.layout import (
    CONFIG_RESOLVED,
    DEEPSPEED_CONFIG,
    METRICS,
    STOP_REQUEST,
    WORKER_RESULT,
)
from pipelines.run_storage import RunDir, check_tracking
from pipelines.tracking.mlflow_run import TrackingTarget
from pipelines.tracking.run_params import run_params
from pipelines.train.checkpointer import plan_launch
from pipelines.train.distill import runlocal_teacher
from pipelines.train.ds_config import deepspeed_config
from pipelines.train.request import TrainRequest
from pipelines.train.stop import StopRequest

LAUNCHERS = launchers.LAUNCHERS
SuccessHook = Callable[[dict[str, Any], TrackingTarget | None], dict[str, Any]]


def run_training_stage(
    config: StageConfig,
    *,
    stage: str = "pretrain",
    run_dir: Path | None = None,
    resume: str = "auto",
    launcher: str = "ray",
    init_from: str | None = None,
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
    progress: bool = True,
    stop_at_step: int | None = None,
    on_success: SuccessHook | None = None,
) -> dict[str, Any] | None:
    """Train one stage to completion (or a clean stop); returns what summary.json holds, or
    None on a torchrun rank other than 0 (it only trains).

    `config` has absolute paths (the CLI resolves them); `run_dir` overrides `config.run_dir`.
    `on_success(summary, tracking)` runs after a finished run, inside the lifecycle, and returns
    fields to add (fine-tuning exports and registers there)."""
    if run_dir is not None:
        config = config.model_copy(update={"run_dir": str(run_dir)})
    request = TrainRequest(
        config=config,
        run_dir=config.resolved_run_dir,
        stage=stage,
        resume=resume,
        init_from=init_from,
        stop_at_step=stop_at_step,
    )
    if not launchers.is_driver(launcher):
        return launchers.run_local(request)  # the Checkpointer gets rank 0's (the driver's) choice
    check_tracking(config)
    ensure_shards(config, parent_run_id=parent_run_id, progress=progress)
    files = request.files()
    if config.runlocal and config.distill is not None:
        config = runlocal_teacher(config, files.path("runlocal-teacher"))
        request = dataclasses.replace(request, config=config)
    files.local.mkdir(parents=True, exist_ok=True)
    stop = StopRequest(files.at(STOP_REQUEST))
    stop.clear()
    files.at(WORKER_RESULT).delete()
    request, resume_from = plan_launch(request)
    world = launchers.world_size(launcher, config)
    files.path(CONFIG_RESOLVED).write_text(dump_config(config))
    ds_json = json.dumps(deepspeed_config(config, world), indent=1)
    files.path(DEEPSPEED_CONFIG).write_text(ds_json)
    for name in (CONFIG_RESOLVED, DEEPSPEED_CONFIG):
        files.publish(name)

    all_tags = {**(tags or {})}
    if init_from:
        all_tags["vitpipe.init_from"] = str(init_from)
    if resume_from is not None:
        all_tags["vitpipe.resumed_from"] = resume_from.uri
    with stage_run(
        stage,
        run_dir=request.run_dir,
        tracking=config.tracking,
        run_name=config.stage_run_name(stage),
        continue_run_id=resume_from.meta.get("mlflow_run_id") if resume_from else None,
        parent_run_id=parent_run_id,
        tags=all_tags,
        params=run_params(config.to_dict(), stage=stage, world_size=world),
    ) as run:
        run.artifacts += _artifacts(config, files)
        request = _with_tracking(request, run)
        with _progress_display(request, enabled=progress), _launched(request, launcher, stop):
            result = (
                launchers.run_local(request) if launcher == "local" else launchers.run_ray(request)
            )
        run.summary.update(result)
        if on_success is not None and result.get("status") == "finished":
            run.summary.update(on_success(run.summary, run.tracking))
    return run.summary


def _with_tracking(request: TrainRequest, run: StageRun) -> TrainRequest:
    return dataclasses.replace(request, tracking=run.tracking)


def _artifacts(config: StageConfig, files: RunDir) -> list[Path]:
    found = [files.path(CONFIG_RESOLVED), files.path(DEEPSPEED_CONFIG)]
    if not config.data.train_shards:
        return found
    for source in config.data.train_sources:
        root = source.shards
        if "://" not in root and (Path(root) / MANIFEST_NAME).is_file():
            found.append(Path(root) / MANIFEST_NAME)
    return found


@contextlib.contextmanager
def _launched(request: TrainRequest, launcher: str, stop: StopRequest) -> Iterator[None]:
    """Ray for the launch (its own SIGTERM handler would exit without a checkpoint, so ours is
    installed after it); SIGTERM or Ctrl-C to the driver asks the workers to checkpoint and
    stop (status `stopped`), a second one aborts."""
    with contextlib.ExitStack() as stack:
        if launcher == "ray":
            stack.enter_context(ray_session(request.config.cluster))
        stack.enter_context(stop.on_signals(signal.SIGTERM, signal.SIGINT, touch_file=True))
        try:
            yield
        finally:
            stop.clear()


@contextlib.contextmanager
def _progress_display(request: TrainRequest, *, enabled: bool) -> Iterator[None]:
    if not enabled:
        yield
        return
    metrics = request.files().at(METRICS)
    with MetricsProgress(metrics, total=request.config.train.total_steps):
        yield
