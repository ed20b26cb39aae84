"""Driver-side MLflow: create or continue a run, record params and artifacts, set its status.

A tracking URI is checked once at start: unreachable is a clear `TrackingError` when
`tracking.required`, else tracking is switched off for the job with a warning.
"""

from __future__ import annotations

import logging
import os
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.config import TrackingSection
from pipelines.errors import TrackingError

log = logging.getLogger(__name__)
_PARAM_BATCH = 100
_PARAM_VALUE_LIMIT = 6000
# On a run that continues a checkpoint whose MLflow run this tracking store does not have.
RESUMED_RUN_TAG = "vitpipe.resumed_mlflow_run_id"


@dataclass(frozen=True)
class TrackingTarget:
    """Where a run lives: enough for any process to log to it."""

    uri: str
    run_id: str
    experiment_id: str


def absolute_uri(uri: str) -> str:
    """Relative `sqlite:///x.db` means relative to the caller's directory; workers have another."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + os.path.abspath(uri[len("sqlite:///") :])
    if uri.startswith("file:") and not uri.startswith("file:///"):
        return "file://" + os.path.abspath(uri[len("file:") :])
    return uri


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as reply:
            if reply.status != 200:
                raise TrackingError(f"tracking.uri={uri!r}: /health answered {reply.status}")
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise TrackingError(
            f"tracking.uri={uri!r} is unreachable ({reason}); start the server, fix the URI, "
            "or set tracking.required=false to train without it"
        ) from None


# MLflow retries an unreachable server for minutes by default; a dead server must cost a stage
# seconds, not minutes (metrics.jsonl keeps everything). A user's own settings win. Every
# process that talks to MLflow (the driver, rank 0's logger, each node's system-metrics monitor)
# sets them for itself: a Ray worker, above all on a cluster, has not got the driver's env.
TRACKING_RETRY_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}


def bound_tracking_retries() -> None:
    for name, value in TRACKING_RETRY_ENV.items():
        os.environ.setdefault(name, value)


def tracking_client(uri: str):
    """An MlflowClient for `uri`, with this process's retries bounded first."""
    from mlflow.tracking import MlflowClient

    bound_tracking_retries()
    return MlflowClient(tracking_uri=uri)


def open_run(
    tracking: TrackingSection,
    *,
    run_name: str,
    run_id: str | None = None,
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
) -> TrackingTarget | None:
    """Start a run (or continue `run_id`); None when tracking is off or optional and down."""
    if not tracking.enabled:
        return None
    uri = absolute_uri(tracking.uri)
    try:
        check_reachable(uri)
        client = tracking_client(uri)
        all_tags = dict(tags or {})
        if run_id:
            run = _existing_run(client, run_id)
            if run is not None:
                client.update_run(run_id, status="RUNNING")
                return TrackingTarget(uri, run_id, run.info.experiment_id)
            # A run dir copied to another machine, or another tracking.uri: go on in a new run.
            log.warning(
                "MLflow run %s is not in %s; continuing in a new run tagged %s=%s",
                run_id,
                tracking.uri,
                RESUMED_RUN_TAG,
                run_id,
            )
            all_tags[RESUMED_RUN_TAG] = run_id
        experiment = client.get_experiment_by_name(tracking.experiment)
        experiment_id = (
            experiment.experiment_id
            if experiment
            else client.create_experiment(tracking.experiment)
        )
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = client.create_run(experiment_id, run_name=run_name, tags=all_tags)
        return TrackingTarget(uri, run.info.run_id, experiment_id)
    except TrackingError:
        if tracking.required:
            raise
        log.warning("tracking is off for this job: %s", tracking.uri)
        return None
    except Exception as err:
        if tracking.required:
            raise TrackingError(
                f"tracking.uri={tracking.uri!r}: {type(err).__name__}: {err}"
            ) from None
        log.warning("tracking is off for this job (%s: %s)", type(err).__name__, err)
        return None


def _existing_run(client, run_id: str):
    """The run, or None when this store has no such run (or it was deleted)."""
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException as err:
        if getattr(err, "error_code", None) == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    return None if run.info.lifecycle_stage == "deleted" else run


def log_params(target: TrackingTarget, params: dict[str, Any]) -> None:
    """Params once per run; a resumed run already has them, so existing keys are skipped."""
    from mlflow.entities import Param

    client = tracking_client(target.uri)
    existing = set(client.get_run(target.run_id).data.params)
    items = [
        Param(k, str(v)[:_PARAM_VALUE_LIMIT])
        for k, v in sorted(params.items())
        if k not in existing
    ]
    for start in range(0, len(items), _PARAM_BATCH):
        client.log_batch(target.run_id, params=items[start : start + _PARAM_BATCH])


def log_artifacts(
    target: TrackingTarget, paths: Iterable[Path], artifact_path: str | None = None
) -> None:
    client = tracking_client(target.uri)
    for path in paths:
        if path.is_dir():
            client.log_artifacts(target.run_id, str(path), artifact_path)
        elif path.is_file():
            client.log_artifact(target.run_id, str(path), artifact_path)


def set_tags(target: TrackingTarget, tags: dict[str, str]) -> None:
    client = tracking_client(target.uri)
    for key, value in tags.items():
        client.set_tag(target.run_id, key, value)


def log_metrics(target: TrackingTarget, metrics: dict[str, float], step: int) -> None:
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    client = tracking_client(target.uri)
    client.log_batch(
        target.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()]
    )


def finish_run(target: TrackingTarget, status: str) -> None:
    """FINISHED, FAILED or KILLED. Best effort: an outage at the very end only warns."""
    try:
        tracking_client(target.uri).set_terminated(target.run_id, status=status)
    except Exception as err:
        log.warning("could not mark MLflow run %s %s: %s", target.run_id, status, err)
