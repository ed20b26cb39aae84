"""The driver of a training stage: run dir, MLflow run, launch, summary.json.

The driver owns the MLflow run (it creates it, passes its id to the workers, and marks it
FINISHED/FAILED/KILLED); rank 0 logs metrics into it while training.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pipelines.config import JobConfig, dump_config
from pipelines.config.paths import with_absolute_paths
from pipelines.errors import CheckpointError
from pipelines.tracking import mlflow_run
from pipelines.tracking.run_params import flatten, git_commit, versions
from pipelines.train import checkpoint as ckpt
from pipelines.train.request import TrainRequest

log = logging.getLogger(__name__)
LAUNCHERS = ("ray", "local")
SuccessHook = Callable[[dict[str, Any], "mlflow_run.TrackingTarget | None"], dict[str, Any]]
TRACKING_RETRY_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}


def run_training_job(
    config: JobConfig,
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
) -> dict[str, Any]:
    """Train one stage to completion (or a clean stop); returns what summary.json holds.

    `on_success(summary, target)` runs after a finished run, before summary.json and the MLflow
    run are closed, and returns fields to add (fine-tuning exports and registers there)."""
    bound_tracking_retries()
    config = with_absolute_paths(config, run_dir)
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    request_stop = run_dir / "STOP"
    request_stop.unlink(missing_ok=True)
    resume_from = _driver_resume_check(run_dir, resume, config)

    (run_dir / "config.resolved.yaml").write_text(dump_config(config))
    world = (
        config.cluster.num_workers if launcher == "ray" else int(os.environ.get("WORLD_SIZE", 1))
    )
    _write_deepspeed_config(config, world, run_dir)

    all_tags = {"vitpipe.stage": stage, **(tags or {})}
    if init_from:
        all_tags["vitpipe.init_from"] = str(init_from)
    if resume_from is not None:
        all_tags["vitpipe.resumed_from"] = str(resume_from.path)
    target = mlflow_run.open_run(
        config.tracking,
        run_name=config.tracking.run_name or f"{config.name}-{stage}",
        run_id=resume_from.meta.get("mlflow_run_id") if resume_from else None,
        parent_run_id=parent_run_id,
        tags=all_tags,
    )
    if target is not None:
        _safely(lambda: _log_run_params(target, config, world, stage, all_tags))

    request = TrainRequest(
        config=config,
        run_dir=run_dir,
        stage=stage,
        resume=resume,
        tracking=target,
        init_from=init_from,
        stop_at_step=stop_at_step,
    )
    started = time.time()
    summary: dict[str, Any] = {"stage": stage, "status": "failed", "run_dir": str(run_dir)}
    try:
        with _progress_display(run_dir, config, enabled=progress):
            result = _launch(request, launcher)
        summary.update(result)
        if on_success is not None and summary.get("status") == "finished":
            summary.update(on_success(summary, target))
    except BaseException as err:
        summary["error"] = str(err).splitlines()[0] if str(err) else type(err).__name__
        _finish(
            summary,
            started,
            run_dir,
            target,
            config,
            status="KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED",
        )
        raise
    _finish(
        summary,
        started,
        run_dir,
        target,
        config,
        status="FINISHED" if summary["status"] == "finished" else "KILLED",
    )
    return summary


def bound_tracking_retries() -> None:
    """MLflow retries an unreachable server for minutes by default; a dead server must cost a
    job seconds, not minutes (metrics.jsonl keeps everything). User settings win."""
    for name, value in TRACKING_RETRY_ENV.items():
        os.environ.setdefault(name, value)


def _launch(request: TrainRequest, launcher: str) -> dict[str, Any]:
    from launch import workers

    if launcher == "local":
        with _stop_on_sigterm(request.stop_file):
            return workers.run_local(request)
    from launch.ray_cluster import ray_session

    # After ray.init: it installs its own SIGTERM handler, which would exit without a checkpoint.
    with ray_session(request.config.cluster), _stop_on_sigterm(request.stop_file):
        return workers.run_ray(request)


def _driver_resume_check(run_dir: Path, resume: str, config: JobConfig) -> ckpt.Checkpoint | None:
    """Fail before starting workers: a wrong model, a missing checkpoint, a run dir in use."""
    root = run_dir / "checkpoints"
    if resume == "never":
        if ckpt.list_checkpoints(root, warn=False):
            raise CheckpointError(
                f"{run_dir} already holds committed checkpoints; use --resume auto to continue it, "
                "or a new --run-dir to start over (nothing was deleted)"
            )
        return None
    found = ckpt.latest_checkpoint(root) if resume == "auto" else ckpt.open_checkpoint(Path(resume))
    if found is not None:
        from pipelines.train.loop import _check_same_model

        _check_same_model(found, config)
        ckpt.check_loadable(found)  # hashes match, no file could run code (issue 16)
    return found


def _write_deepspeed_config(config: JobConfig, world: int, run_dir: Path) -> None:
    from pipelines.train.ds_config import deepspeed_config

    (run_dir / "deepspeed_config.json").write_text(
        json.dumps(deepspeed_config(config, world), indent=1)
    )


def _log_run_params(
    target, config: JobConfig, world: int, stage: str, tags: dict[str, str]
) -> None:
    params = flatten(config.to_dict())
    params["world_size"] = str(world)
    params["stage"] = stage
    params.update({f"version.{k}": v for k, v in versions().items()})
    commit = git_commit()
    if commit:
        params["git_commit"] = commit
    mlflow_run.log_params(target, params)


def _finish(
    summary: dict, started: float, run_dir: Path, target, config: JobConfig, *, status: str
) -> None:
    summary["elapsed_s"] = round(time.time() - started, 2)
    summary["mlflow_run_id"] = target.run_id if target else None
    summary["mlflow_tracking_uri"] = target.uri if target else None
    path = run_dir / "summary.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(summary, indent=1, default=str))
    tmp.replace(path)
    if target is None:
        return
    artifacts = [run_dir / "config.resolved.yaml", run_dir / "deepspeed_config.json", path]
    manifest = _manifest_path(config)
    if manifest is not None:
        artifacts.append(manifest)
    final = {
        k: float(v)
        for k, v in summary.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }
    _safely(
        lambda: mlflow_run.log_metrics(
            target, {f"final/{k}": v for k, v in final.items()}, summary.get("steps", 0)
        )
    )
    _safely(lambda: mlflow_run.log_artifacts(target, artifacts))
    mlflow_run.finish_run(target, status)


def _manifest_path(config: JobConfig) -> Path | None:
    root = config.data.train_shards
    if root and "://" not in root:
        path = Path(root) / "manifest.json"
        return path if path.is_file() else None
    return None


def _safely(fn) -> None:
    """Tracking is never worth failing a finished training run for."""
    try:
        fn()
    except Exception as err:
        log.warning("tracking: %s: %s", type(err).__name__, str(err)[:200])


@contextlib.contextmanager
def _stop_on_sigterm(stop_file: Path) -> Iterator[None]:
    """SIGTERM to the driver asks the workers to checkpoint and exit cleanly."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signals reach the main thread only; the STOP file still works
        return
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum, frame):
        stop_file.touch()

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        stop_file.unlink(missing_ok=True)


@contextlib.contextmanager
def _progress_display(run_dir: Path, config: JobConfig, *, enabled: bool) -> Iterator[None]:
    if not enabled:
        yield
        return
    from launch.progress import MetricsProgress

    with MetricsProgress(run_dir / "metrics.jsonl", total=config.train.total_steps):
        yield
