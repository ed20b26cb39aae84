"""The one lifecycle every stage (shard, pretrain, finetune, eval, run) runs in.

`stage_run(...)` opens the stage's MLflow run (or continues one), hands the stage a `StageRun`
whose `summary` it fills, and on every way out (success, a clean stop, an error, Ctrl-C) writes
`summary.json` atomically, logs the final numbers and artifacts, and closes the MLflow run with
the matching status. Tracking is never worth failing a stage for: its errors only warn.

summary.json has the same schema for every stage: `stage`, `status` (finished | stopped |
failed | killed), `run_dir`, `elapsed_s`, `mlflow_run_id`, `mlflow_tracking_uri`, `error` (failed
or killed only), then the stage's own fields.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.config import TrackingSection
from pipelines.layout import SUMMARY
from pipelines.storage import Location, locate
from pipelines.tracking import mlflow_run
from pipelines.tracking.mlflow_run import TrackingTarget

log = logging.getLogger(__name__)

STATUSES = ("finished", "stopped", "failed", "killed")
_MLFLOW_STATUS = {
    "finished": "FINISHED",
    "stopped": "KILLED",
    "failed": "FAILED",
    "killed": "KILLED",
}


@dataclass
class StageRun:
    """A stage in progress: the summary it fills, its MLflow run, the files to log at the end."""

    stage: str
    run_dir: Location
    tracking: TrackingTarget | None
    summary: dict[str, Any] = field(default_factory=dict)
    artifacts: list[Path] = field(default_factory=list)


@contextlib.contextmanager
def stage_run(
    stage: str,
    *,
    run_dir: str | Path,
    tracking: TrackingSection,
    run_name: str,
    continue_run_id: str | None = None,
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
) -> Iterator[StageRun]:
    started = time.time()
    location = locate(str(run_dir))
    target = mlflow_run.open_run(
        tracking,
        run_name=run_name,
        run_id=continue_run_id,
        parent_run_id=parent_run_id,
        tags={"vitpipe.stage": stage, **(tags or {})},
    )
    run = StageRun(stage, location, target, {"stage": stage, "run_dir": location.uri})
    if target is not None and params:
        _safely(lambda: mlflow_run.log_params(target, params))
    try:
        yield run
    except BaseException as err:
        run.summary["status"] = "killed" if isinstance(err, KeyboardInterrupt) else "failed"
        text = str(err).strip()
        run.summary["error"] = text.splitlines()[0] if text else type(err).__name__
        _close(run, started)
        raise
    run.summary.setdefault("status", "finished")
    _close(run, started)


def _close(run: StageRun, started: float) -> None:
    summary = run.summary
    assert summary["status"] in STATUSES, summary["status"]
    summary["elapsed_s"] = round(time.time() - started, 2)
    summary["mlflow_run_id"] = run.tracking.run_id if run.tracking else None
    summary["mlflow_tracking_uri"] = run.tracking.uri if run.tracking else None
    path = run.run_dir.join(SUMMARY)
    path.write_bytes_atomic((json.dumps(summary, indent=1, default=str) + "\n").encode())
    target = run.tracking
    if target is None:
        return
    numbers = {
        f"final/{k}": float(v)
        for k, v in summary.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }
    step = int(summary.get("steps") or 0)
    _safely(lambda: mlflow_run.log_metrics(target, numbers, step))
    local_summary = Path(path.path) if run.run_dir.is_local else None
    artifacts = [*run.artifacts, *([local_summary] if local_summary else [])]
    _safely(lambda: mlflow_run.log_artifacts(target, artifacts))
    mlflow_run.finish_run(target, _MLFLOW_STATUS[summary["status"]])


def _safely(fn) -> None:
    try:
        fn()
    except Exception as err:
        log.warning("tracking: %s: %s", type(err).__name__, str(err)[:200])
