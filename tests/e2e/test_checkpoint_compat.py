"""A checkpoint written by vitpipe 0.1 (tests/fixtures/ckpt_v0_1, made by
tests/fixtures/make_ckpt_v0_1.py at commit 611ede4) resumes directly: the next 10 losses and the
exported weights equal what the 0.1 code produced."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from launch.stages.training import run_training_stage
from pipelines.checkpoint.export import export_checkpoint
from pipelines.config import config_from_dict

from train_fixtures import train_losses

pytestmark = pytest.mark.slow

FIXTURE = Path(__file__).parents[1] / "fixtures" / "ckpt_v0_1"


def test_a_0_1_checkpoint_resumes_to_the_same_losses_and_weights(tmp_path, ray_local):
    shards = tmp_path / "shards"
    shutil.copytree(FIXTURE / "shards", shards)
    run_dir = tmp_path / "run"
    shutil.copytree(FIXTURE / "checkpoints", run_dir / "checkpoints")
    raw = yaml.safe_load((FIXTURE / "config.yaml").read_text())
    raw["data"]["train_shards"] = str(shards)

    result = run_training_stage(config_from_dict(raw), run_dir=run_dir, progress=False)

    assert result["status"] == "finished"
    expected = {
        int(k): v for k, v in json.loads((FIXTURE / "expected_losses.json").read_text()).items()
    }
    got = train_losses(run_dir)
    assert {s: got[s] for s in expected} == expected
    export_checkpoint(run_dir / "checkpoints", tmp_path / "export")
    want = load_file(FIXTURE / "expected_final.safetensors")
    have = load_file(tmp_path / "export" / "model.safetensors")
    assert want.keys() == have.keys()
    for name in want:
        assert torch.equal(want[name], have[name]), name
