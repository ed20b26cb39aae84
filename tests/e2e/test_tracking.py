"""MLflow tracking against a real `mlflow server` on 127.0.0.1: an outage never stops training."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from launch.processes.ports import free_loopback_port
from launch.stages.training import run_training_stage
from pipelines.errors import TrackingError

from train_fixtures import as_config, tiny_job, train_losses

pytestmark = pytest.mark.slow


@pytest.fixture
def mlflow_server(tmp_path):
    port = free_loopback_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--default-artifact-root",
            str(tmp_path / "server-artifacts"),
        ],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as reply:
                if reply.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline or server.poll() is not None:
            os.killpg(server.pid, signal.SIGKILL)
            pytest.fail("mlflow server did not start")
        time.sleep(0.5)
    yield url, server
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def test_server_killed_mid_run_does_not_stop_training(
    fractal_shards, tmp_path, mlflow_server, ray_local
):
    url, server = mlflow_server
    total = 20
    raw = tiny_job(
        fractal_shards,
        tmp_path,
        train={"total_steps": total},
        checkpoint={"every_n_steps": None},
        tracking={"uri": url, "experiment": "outage"},
    )
    run_dir = tmp_path / "run"
    outcome: dict = {}

    def train() -> None:
        try:
            outcome["result"] = run_training_stage(as_config(raw), run_dir=run_dir, progress=False)
        except BaseException as err:
            outcome["error"] = err

    thread = threading.Thread(target=train)
    thread.start()
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        assert time.monotonic() < deadline and thread.is_alive(), outcome
        time.sleep(0.2)
    os.killpg(server.pid, signal.SIGKILL)
    server.wait()
    thread.join(timeout=600)

    assert "error" not in outcome, outcome.get("error")
    result = outcome["result"]
    assert result["status"] == "finished" and result["steps"] == total
    assert sorted(train_losses(run_dir)) == list(range(1, total + 1))  # jsonl kept everything
    assert result["mlflow_run_id"]
    written = json.loads((run_dir / "summary.json").read_text())
    assert written["status"] == "finished"


def test_metrics_reach_a_live_server(fractal_shards, tmp_path, mlflow_server, ray_local):
    url, _ = mlflow_server
    raw = tiny_job(
        fractal_shards,
        tmp_path,
        train={"total_steps": 4},
        checkpoint={"every_n_steps": None},
        tracking={"uri": url, "experiment": "live"},
        cluster={"num_workers": 1},
    )
    raw["train"]["global_batch_size"] = 16
    result = run_training_stage(as_config(raw), run_dir=tmp_path / "run", progress=False)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=url)
    run = client.get_run(result["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == 4
    assert result["tracking_complete"] is True


def test_unreachable_server_at_start_is_a_clear_error_unless_optional(fractal_shards, tmp_path):
    url = f"http://127.0.0.1:{free_loopback_port()}"
    raw = tiny_job(fractal_shards, tmp_path, tracking={"uri": url})
    with pytest.raises(TrackingError, match="unreachable.*tracking.required=false"):
        run_training_stage(as_config(raw), run_dir=tmp_path / "run", progress=False)
    assert not (Path(tmp_path) / "run" / "checkpoints").exists()
