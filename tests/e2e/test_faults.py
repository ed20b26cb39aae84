"""Faults a real training run meets: a disk that fills up on save, and Ctrl-C.
Each runs `vitpipe pretrain` as a user would (its own process, local Ray, 2 workers)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launch.stages.training import run_training_stage

from train_fixtures import as_config, summary, tiny_job, train_losses, write_yaml

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parents[2]


def _env() -> dict[str, str]:
    return {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def test_a_full_disk_fails_the_job_promptly_and_keeps_the_last_checkpoint(fractal_shards, tmp_path):
    raw = tiny_job(
        fractal_shards,
        tmp_path,
        train={"total_steps": 8},
        checkpoint={"every_n_steps": 2, "keep_last": 2},
        tracking={"enabled": False},
        data={"num_workers": 0},
    )
    config = write_yaml(raw, tmp_path / "config.yaml")
    mount, kept = tmp_path / "small-disk", tmp_path / "kept"
    mount.mkdir()
    # A 3.5 MB filesystem of its own (a mount namespace, so no privileges are needed): room
    # for one checkpoint of the tiny model (1.8 MB) but not two. The run dir is copied out
    # after the job, before the namespace (and the tmpfs) go.
    command = (
        f"mount -t tmpfs -o size=3500k tmpfs {mount} && "
        f"{sys.executable} -m launch.cli pretrain -c {config} --run-dir {mount}/run "
        f"--no-progress; rc=$?; cp -a {mount}/run {kept}; exit $rc"
    )
    started = time.monotonic()
    done = subprocess.run(
        ["unshare", "--map-root-user", "--mount", "sh", "-c", command],
        env=_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    elapsed = time.monotonic() - started
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 1, done.stderr[-3000:]
    assert len(errors) == 1 and "no space left for checkpoint step_0000004" in errors[0], errors
    assert elapsed < 300  # not the 30-minute collective timeout of a hung rank
    written = summary(kept)
    assert written["status"] == "failed" and "no space left" in written["error"]
    assert (kept / "checkpoints" / "step_0000002" / "COMMITTED.json").is_file()
    assert not (kept / "checkpoints" / "step_0000004").exists()

    resumed = run_training_stage(as_config(raw), run_dir=kept, progress=False)  # room again
    assert resumed["status"] == "finished" and resumed["resumed_from"].endswith("step_0000002")
    assert sorted(train_losses(kept)) == list(range(1, 9))


def test_ctrl_c_checkpoints_and_stops_like_sigterm(fractal_shards, tmp_path):
    raw = tiny_job(
        fractal_shards,
        tmp_path,
        train={"total_steps": 400},
        checkpoint={"every_n_steps": 200},
        data={"num_workers": 0},
    )
    config = write_yaml(raw, tmp_path / "config.yaml")
    run_dir = tmp_path / "run"
    job = subprocess.Popen(
        [sys.executable, "-m", "launch.cli", "pretrain", "-c", str(config)]
        + ["--run-dir", str(run_dir), "--no-progress"],
        env=_env(),
        cwd=ROOT,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        metrics = run_dir / "metrics.jsonl"
        while not (metrics.exists() and metrics.read_text().count('"train/loss"') >= 2):
            assert job.poll() is None, job.communicate()[1][-3000:]
            time.sleep(0.2)
        job.send_signal(signal.SIGINT)  # what Ctrl-C sends
        out, err = job.communicate(timeout=300)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert job.returncode == 0, err[-3000:]
    written = summary(run_dir)
    assert written["status"] == "stopped" and 2 <= written["steps"] < 400
    stopped = run_dir / "checkpoints" / f"step_{written['steps']:07d}" / "COMMITTED.json"
    assert stopped.is_file() and json.loads(out.strip().splitlines()[-1])["status"] == "stopped"

    from mlflow.tracking import MlflowClient

    run = MlflowClient(tracking_uri=written["mlflow_tracking_uri"]).get_run(
        written["mlflow_run_id"]
    )
    assert run.info.status == "KILLED"  # stopped before the end, cleanly
    shutil.rmtree(run_dir / "ray", ignore_errors=True)
