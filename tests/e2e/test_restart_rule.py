"""One choice of checkpoint per launch: when Ray Train restarts the workers of a launch that
started with `--resume never`, they continue from what this launch saved (no refusal, no fresh
start); under torchrun the other ranks resume from rank 0's (the driver's) choice."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from launch.processes.ports import free_loopback_port
from launch.stages.training import run_training_stage
from pipelines.checkpoint.files import list_checkpoints

from train_fixtures import as_config, child_env, keys_by_epoch, summary, tiny_job, write_yaml

pytestmark = pytest.mark.slow


def _wait_for(path: Path, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear")
        time.sleep(0.2)


def test_a_restart_under_resume_never_continues_from_this_launch(fractal_shards, tmp_path):
    raw = tiny_job(
        fractal_shards,
        tmp_path,
        train={"total_steps": 12, "record_sample_keys": True},
        checkpoint={"every_n_steps": 2, "keep_last": 10},
        cluster={"max_failures": 1},
        tracking={"enabled": False},
    )
    run_dir = tmp_path / "run"
    outcome: dict = {}

    def train() -> None:
        try:
            outcome["result"] = run_training_stage(
                as_config(raw), run_dir=run_dir, resume="never", progress=False
            )
        except BaseException as err:  # surfaced by the assertion below
            outcome["error"] = err

    thread = threading.Thread(target=train)
    thread.start()
    _wait_for(run_dir / "checkpoints" / "step_0000002" / "COMMITTED.json")
    workers = [
        p
        for p in psutil.Process().children(recursive=True)
        if "RayTrainWorker" in " ".join(p.cmdline())
    ]
    assert workers, "no Ray Train worker found"
    workers[-1].kill()
    thread.join(timeout=600)
    assert "error" not in outcome, outcome.get("error")
    result = outcome["result"]
    assert result["status"] == "finished" and result["steps"] == 12
    assert result["resumed_from"] is not None  # continued, not started over
    launches = {c.meta.get("launch_id") for c in list_checkpoints(run_dir / "checkpoints")}
    assert len(launches) == 1 and None not in launches
    epoch0 = keys_by_epoch(run_dir)[0]
    assert len(epoch0) == len(set(epoch0)), "a sample was read twice after the restart"


def _torchrun(config: Path, run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    env = child_env()
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[2]), env.get("PYTHONPATH", "")])
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    command += ["--master-addr", "127.0.0.1", "--master-port", str(free_loopback_port())]
    command += ["-m", "launch.cli", "pretrain", "-c", str(config), "--launcher", "local"]
    command += ["--run-dir", str(run_dir), "--no-progress", *extra]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def test_torchrun_ranks_resume_from_the_drivers_choice(fractal_shards, tmp_path):
    raw = tiny_job(
        fractal_shards,
        tmp_path,
        train={"total_steps": 4, "record_sample_keys": True},
        checkpoint={"every_n_steps": 2},
        tracking={"enabled": False},
    )
    config = write_yaml(raw, tmp_path / "config.yaml")
    run_dir = tmp_path / "run"
    first = _torchrun(config, run_dir, "--stop-at-step", "2")
    assert first.returncode == 0, first.stderr[-3000:]
    assert summary(run_dir)["status"] == "stopped"
    second = _torchrun(config, run_dir)
    assert second.returncode == 0, second.stderr[-3000:]
    results = [json.loads(line) for line in second.stdout.splitlines() if line.startswith("{")]
    assert len(results) == 1  # rank 1 only trained
    resumed = summary(run_dir)
    assert resumed["status"] == "finished" and resumed["steps"] == 4
    assert resumed["resumed_from"].endswith("step_0000002")
    epoch0 = keys_by_epoch(run_dir)[0]
    assert len(epoch0) == len(set(epoch0)) == 4 * 32  # both ranks continued, none repeated
