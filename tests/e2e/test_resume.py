"""Resume is exact: after SIGKILL of the whole job, after Ray restarts a killed worker, and past a
torn checkpoint. Resume on a different number of workers continues without repeating samples."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch

from launch.stages.training import run_training_stage
from pipelines.checkpoint.export import consolidated_state_dict, export_checkpoint, load_exported
from pipelines.checkpoint.files import latest_checkpoint, list_checkpoints, open_checkpoint
from pipelines.errors import CheckpointError

from train_fixtures import (
    as_config,
    keys_by_epoch,
    kill_session,
    summary,
    tiny_job,
    train_losses,
    write_yaml,
)

pytestmark = pytest.mark.slow

TOTAL = 14  # 11 batches per epoch per rank: checkpoints at 5 and 10 are mid-epoch


def exact_job(shards: Path, tmp_path: Path, **sections) -> dict:
    """Drop path, mixup and RandAugment on, so RNG and loader state both matter."""
    raw = tiny_job(
        shards,
        tmp_path,
        model={"drop_path_rate": 0.1},
        augment={"mixup_alpha": 0.2, "randaugment": True},
        train={"total_steps": TOTAL, "log_every_n_steps": 1},
        checkpoint={"every_n_steps": 5, "keep_last": 3},
    )
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return raw


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return consolidated_state_dict(latest_checkpoint(run_dir / "checkpoints"))


def assert_same_run(reference: Path, resumed: Path, after_step: int) -> None:
    expected, got = train_losses(reference), train_losses(resumed)
    assert sorted(got) == sorted(expected) == list(range(1, TOTAL + 1))
    for step in range(after_step + 1, TOTAL + 1):
        assert got[step] == expected[step], (step, got[step], expected[step])
    a, b = final_weights(reference), final_weights(resumed)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def wait_for(path: Path, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def reference_run(fractal_shards, tmp_path_factory, ray_local):
    """Run A: trained uninterrupted to TOTAL steps on 2 workers."""
    tmp = tmp_path_factory.mktemp("reference")
    run_dir = tmp / "run"
    run_training_stage(as_config(exact_job(fractal_shards, tmp)), run_dir=run_dir, progress=False)
    return run_dir


def test_sigkill_of_the_whole_job_then_resume_auto_is_bit_exact(
    fractal_shards, tmp_path, reference_run
):
    raw = exact_job(fractal_shards, tmp_path)
    run_dir = tmp_path / "run"
    config_file = write_yaml(raw, tmp_path / "config.yaml")
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    command = [sys.executable, "-m", "launch.cli", "pretrain", "-c", str(config_file)]
    job = subprocess.Popen(
        [*command, "--run-dir", str(run_dir), "--no-progress"],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(run_dir / "checkpoints" / "step_0000005" / "COMMITTED.json")
    finally:
        kill_session(job)
    assert job.wait(timeout=30) == -signal.SIGKILL

    result = run_training_stage(as_config(raw), run_dir=run_dir, resume="auto", progress=False)
    assert result["resumed_from"] is not None
    resumed_step = open_checkpoint(Path(result["resumed_from"])).step
    assert resumed_step in (5, 10)
    assert_same_run(reference_run, run_dir, resumed_step)


def test_sigterm_checkpoints_and_exits_cleanly(fractal_shards, tmp_path):
    raw = exact_job(
        fractal_shards,
        tmp_path,
        train={"total_steps": 400},
        checkpoint={"every_n_steps": 2},
        tracking={"enabled": False},
    )
    run_dir = tmp_path / "run"
    config_file = write_yaml(raw, tmp_path / "config.yaml")
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    job = subprocess.Popen(
        [sys.executable, "-m", "launch.cli", "pretrain", "-c", str(config_file)]
        + ["--run-dir", str(run_dir), "--no-progress"],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(run_dir / "checkpoints" / "step_0000002" / "COMMITTED.json")
        job.send_signal(signal.SIGTERM)
        assert job.wait(timeout=300) == 0, job.stderr.read().decode()[-2000:]
    finally:
        if job.poll() is None:
            kill_session(job)
    stopped = summary(run_dir)
    assert stopped["status"] == "stopped" and 2 <= stopped["steps"] < 400
    assert Path(stopped["checkpoint"]).name == f"step_{stopped['steps']:07d}"
    assert latest_checkpoint(run_dir / "checkpoints").step == stopped["steps"]


def test_worker_killed_mid_run_is_restored_by_failure_config_bit_exact(
    fractal_shards, tmp_path, reference_run
):
    raw = exact_job(fractal_shards, tmp_path, cluster={"max_failures": 1})
    run_dir = tmp_path / "run"
    outcome: dict = {}

    def train() -> None:
        try:
            # `never`: a restart continues from what this launch saved, never refuses it.
            outcome["result"] = run_training_stage(
                as_config(raw), run_dir=run_dir, resume="never", progress=False
            )
        except BaseException as err:  # surfaced by the assertion below
            outcome["error"] = err

    thread = threading.Thread(target=train)
    thread.start()
    wait_for(run_dir / "checkpoints" / "step_0000005" / "COMMITTED.json")
    workers = [
        p
        for p in psutil.Process().children(recursive=True)
        if "RayTrainWorker" in " ".join(p.cmdline())
    ]
    assert workers, "no Ray Train worker found"
    workers[-1].kill()
    thread.join(timeout=600)
    assert "error" not in outcome, outcome.get("error")
    assert outcome["result"]["status"] == "finished"
    assert outcome["result"]["resumed_from"] is not None  # continued, not started over
    launches = {c.meta.get("launch_id") for c in list_checkpoints(run_dir / "checkpoints")}
    assert len(launches) == 1 and None not in launches
    assert_same_run(reference_run, run_dir, 5)


def test_torn_checkpoint_is_skipped_for_the_previous_one(fractal_shards, tmp_path, caplog):
    raw = exact_job(fractal_shards, tmp_path, tracking={"enabled": False})
    run_dir = tmp_path / "run"
    run_training_stage(as_config(raw), run_dir=run_dir, progress=False, stop_at_step=10)
    root = run_dir / "checkpoints"
    (root / "step_0000010" / "vitpipe_rank00001.json").unlink()  # a rank's file lost
    torn = root / "step_0000012"  # killed while saving: files, no marker
    torn.mkdir()
    (torn / "mp_rank_00_model_states.pt").write_bytes(b"partial")

    with caplog.at_level(logging.WARNING):
        result = run_training_stage(as_config(raw), run_dir=run_dir, progress=False)
    assert result["status"] == "finished" and result["steps"] == TOTAL
    assert Path(result["resumed_from"]).name == "step_0000005"
    warnings = caplog.text
    assert "step_0000010: file vitpipe_rank00001.json is missing" in warnings
    assert "step_0000012: no completion marker" in warnings


@pytest.mark.parametrize(("before", "after"), [(2, 1), (1, 2)])
def test_resume_on_a_different_number_of_workers(fractal_shards, tmp_path, before, after):
    raw = exact_job(
        fractal_shards,
        tmp_path,
        model={"drop_path_rate": 0.0},
        augment={"mixup_alpha": 0.0, "randaugment": False},
        train={"record_sample_keys": True, "total_steps": 10},
        cluster={"num_workers": before},
        tracking={"enabled": False},
    )
    run_dir = tmp_path / "run"
    first = run_training_stage(as_config(raw), run_dir=run_dir, progress=False, stop_at_step=4)
    assert first["status"] == "stopped" and first["steps"] == 4

    raw["cluster"]["num_workers"] = after
    second = run_training_stage(as_config(raw), run_dir=run_dir, progress=False)
    assert second["status"] == "finished" and second["steps"] == 10
    assert second["world_size"] == after
    assert Path(second["resumed_from"]).name == "step_0000004"
    assert (run_dir / "checkpoints" / "universal" / "step_0000004").is_dir()

    epoch0 = keys_by_epoch(run_dir)[0]
    assert len(epoch0) == len(set(epoch0)), "a sample of the interrupted epoch was repeated"
    assert len(epoch0) >= 10 * 32 - 2 * 32  # at most the remainder dropped
    losses = train_losses(run_dir)
    assert sorted(losses) == list(range(1, 11))
    assert abs(losses[5] - losses[4]) < 0.5  # continues smoothly, no restart from scratch


def test_resume_at_the_end_of_an_epoch_reads_the_next_one_once(fractal_shards, tmp_path):
    """Stopped exactly where epoch 0 ends (11 steps of 32 of 360 images), the run continues
    with epoch 1 and counts it as epoch 1, then reads epoch 2: the same keys per epoch as a run
    that was never stopped."""
    raw = tiny_job(
        fractal_shards,
        tmp_path,
        train={"record_sample_keys": True, "total_steps": 24},
        checkpoint={"every_n_steps": 11, "keep_last": 2},
        cluster={"num_workers": 1},
        tracking={"enabled": False},
    )
    reference, stopped = tmp_path / "reference", tmp_path / "stopped"
    run_training_stage(as_config(raw), run_dir=reference, launcher="local", progress=False)
    first = run_training_stage(
        as_config(raw), run_dir=stopped, launcher="local", progress=False, stop_at_step=11
    )
    assert first["status"] == "stopped" and first["steps"] == 11
    run_training_stage(as_config(raw), run_dir=stopped, launcher="local", progress=False)
    expected, got = keys_by_epoch(reference), keys_by_epoch(stopped)
    assert sorted(got) == [0, 1, 2]
    assert got == expected
    assert train_losses(stopped) == train_losses(reference)


def test_changed_model_section_is_an_error_showing_the_difference(
    fractal_shards, tmp_path, reference_run
):
    raw = exact_job(fractal_shards, tmp_path, model={"depth": 3})
    with pytest.raises(CheckpointError, match=r"model\.depth: 2 -> 3"):
        run_training_stage(as_config(raw), run_dir=reference_run, progress=False)
    with pytest.raises(CheckpointError, match="already holds committed checkpoints"):
        run_training_stage(
            as_config(exact_job(fractal_shards, tmp_path)),
            run_dir=reference_run,
            resume="never",
            progress=False,
        )


def test_export_gives_consolidated_fp32_weights_vit_core_loads(reference_run, tmp_path):
    out = tmp_path / "export"
    info = export_checkpoint(reference_run / "checkpoints", out)
    assert info["step"] == TOTAL
    model, loaded_info = load_exported(out)
    assert loaded_info["classes"] and len(loaded_info["classes"]) == 10
    expected = final_weights(reference_run)
    for name, tensor in model.state_dict().items():
        assert tensor.dtype == torch.float32
        assert torch.equal(tensor, expected[name]), name
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(CheckpointError, match="not empty"):
        export_checkpoint(reference_run / "checkpoints", out)
    assert json.loads((out / "config.json").read_text())["preprocess"]["img_size"] == 32
    assert summary(reference_run)["checkpoint"].endswith(f"step_{TOTAL:07d}")
