"""Where every node of a run shows up in MLflow: its CPU, memory, disk, network and (where
nvidia-ml-py finds them) GPUs as `system/<node>/...` metrics, sampled by MLflow's own monitor on
one process per node, and a run tag listing which ranks ran on which node, so a slow node is
visible in the MLflow UI."""

from __future__ import annotations

import json
import logging
from typing import Any

from pipelines.tracking import mlflow_run
from pipelines.tracking.mlflow_run import TrackingTarget

log = logging.getLogger(__name__)
NODES_TAG = "vitpipe.nodes"


def node_label(node_id: str) -> str:
    """A short, stable name for a node in metric names (Ray node ids are 56 hex digits)."""
    return f"node-{node_id[:12]}" if len(node_id) > 12 else node_id


def start_node_monitor(target: TrackingTarget, node_id: str) -> Any | None:
    """MLflow's system-metrics monitor for this node, logging into the run; None when it
    cannot start (tracking must never stop training)."""
    mlflow_run.bound_tracking_retries()  # its last flush at finish() must not wait minutes
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(
            target.run_id,
            node_id=node_label(node_id),
            tracking_uri=target.uri,
            resume_logging=True,
        )
        monitor.start()
        return monitor
    except Exception as err:
        log.warning("system metrics are off on this node: %s: %s", type(err).__name__, err)
        return None


def stop_node_monitor(monitor: Any | None) -> None:
    if monitor is not None:
        try:
            monitor.finish()
        except Exception as err:
            log.warning("system metrics: %s: %s", type(err).__name__, err)


def tag_nodes(target: TrackingTarget, ranks_by_node: dict[str, list[int]]) -> None:
    """`vitpipe.nodes`: {node: [ranks]} of this (restart of the) run."""
    shown = {node_label(node): ranks for node, ranks in sorted(ranks_by_node.items())}
    try:
        mlflow_run.set_tags(target, {NODES_TAG: json.dumps(shown, sort_keys=True)})
    except Exception as err:
        log.warning("tracking: %s: %s", type(err).__name__, str(err)[:200])
