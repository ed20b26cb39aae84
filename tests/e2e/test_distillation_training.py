"""DeiT distillation through the pipeline: a tiny distilled student learns from a tiny exported
teacher on 2 Ray workers with ZeRO-2, resumes bit-exactly after the whole job is killed,
refuses to resume with another teacher, and exports a model timm's VisionTransformerDistilled
loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from launch.stages.training import run_training_stage
from pipelines.checkpoint.export import (
    consolidated_state_dict,
    export_checkpoint,
    export_info,
    save_model,
)
from pipelines.checkpoint.files import latest_checkpoint
from pipelines.errors import CheckpointError
from vit_core import VisionTransformer, ViTConfig

from timm_fixtures import timm_model
from train_fixtures import (
    TINY_DISTILLED,
    as_config,
    kill_session,
    tiny_job,
    train_losses,
    write_yaml,
)

pytestmark = pytest.mark.slow

TOTAL = 8


def teacher_export(out: Path, seed: int) -> Path:
    """A tiny plain ViT with the fractal shards' 10 classes, exported as vitpipe exports."""
    torch.manual_seed(seed)
    config = ViTConfig(img_size=32, patch_size=4, dim=48, depth=1, num_heads=2, num_classes=10)
    model = VisionTransformer(config)
    save_model(model, out, info=export_info(model, stage="teacher"))
    return out


def distill_job(shards: Path, tmp_path: Path, teacher: Path) -> dict:
    return tiny_job(
        shards,
        tmp_path,
        model=TINY_DISTILLED,
        augment={"mixup_alpha": 0.2},
        distill={"teacher": str(teacher), "kind": "soft", "alpha": 0.5, "tau": 2.0},
        train={"total_steps": TOTAL},
        checkpoint={"every_n_steps": 4, "keep_last": 3},
        tracking={"enabled": False},
    )


@pytest.fixture(scope="module")
def reference(fractal_shards, tmp_path_factory, ray_local):
    tmp = tmp_path_factory.mktemp("distill")
    teacher = teacher_export(tmp / "teacher", seed=0)
    raw = distill_job(fractal_shards, tmp, teacher)
    run_training_stage(as_config(raw), run_dir=tmp / "reference", progress=False)
    return tmp, raw


def test_a_killed_distillation_resumes_bit_exactly(reference, fractal_shards, tmp_path):
    tmp, raw = reference
    run_dir = tmp_path / "run"
    config_file = write_yaml(raw, tmp_path / "config.yaml")
    job = subprocess.Popen(
        [sys.executable, "-m", "launch.cli", "pretrain", "-c", str(config_file)]
        + ["--run-dir", str(run_dir), "--no-progress"],
        env={**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"},
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    marker = run_dir / "checkpoints" / "step_0000004" / "COMMITTED.json"
    try:
        while not marker.exists():
            assert job.poll() is None, "the job ended before its first checkpoint"
            time.sleep(0.2)
    finally:
        kill_session(job)
    result = run_training_stage(as_config(raw), run_dir=run_dir, progress=False)
    assert result["status"] == "finished" and result["resumed_from"] is not None
    assert "mfu_with_teacher" in result and result["mfu_with_teacher"] > result["mfu"]

    expected, got = train_losses(tmp / "reference"), train_losses(run_dir)
    assert sorted(got) == list(range(1, TOTAL + 1))
    assert all(got[s] == expected[s] for s in range(5, TOTAL + 1)), (got, expected)
    a = consolidated_state_dict(latest_checkpoint(tmp / "reference" / "checkpoints"))
    b = consolidated_state_dict(latest_checkpoint(run_dir / "checkpoints"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resuming_with_another_teacher_is_refused(reference, tmp_path):
    tmp, raw = reference
    other = teacher_export(tmp_path / "other-teacher", seed=1)
    changed = {**raw, "distill": {**raw["distill"], "teacher": str(other)}}
    with pytest.raises(CheckpointError, match="teacher"):
        run_training_stage(as_config(changed), run_dir=tmp / "reference", progress=False)


def test_the_distilled_export_loads_in_timm(reference, tmp_path):
    tmp, _ = reference
    out = tmp_path / "export"
    export_checkpoint(tmp / "reference" / "checkpoints", out, "timm")
    from safetensors.torch import load_file

    config = ViTConfig.from_dict(json.loads((out / "config.json").read_text())["vit_config"])
    assert config.distilled
    theirs = timm_model(config)
    assert type(theirs).__name__ == "VisionTransformerDistilled"
    theirs.load_state_dict(load_file(out / "model.safetensors"), strict=True)
