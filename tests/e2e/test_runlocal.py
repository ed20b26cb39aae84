"""Every shipped recipe runs: `--runlocal` shrinks it to a few steps of a tiny model on local
fractal shards, trained in this process (`--launcher local`), as big_vision's `runlocal` does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from launch.cli import main
from pipelines.config import load_config

pytestmark = pytest.mark.slow

CONFIGS = Path(__file__).parents[2] / "configs"
PRETRAIN = sorted((CONFIGS / "pretrain").glob("*.yaml"))
FINETUNE = sorted((CONFIGS / "finetune").glob("*.yaml"))


def _run(command: str, recipe: Path, run_dir: Path, tmp_path: Path, *extra: str) -> dict:
    argv = [command, "-c", str(recipe), "--runlocal", "--launcher", "local", "--no-progress"]
    argv += ["--run-dir", str(run_dir), "--set", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db"]
    assert main([*argv, *extra]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["steps"] == 4, summary
    return summary


def test_runlocal_shrinks_a_recipe_and_keeps_its_choices():
    recipe = CONFIGS / "pretrain" / "vit_b16_i21k.yaml"
    big, small = load_config(recipe), load_config(recipe, ["runlocal=true"])
    assert (small.model.dim, small.model.img_size, small.train.total_steps) == (64, 32, 4)
    assert small.cluster.num_workers == 1 and not small.cluster.use_gpu
    assert small.shard is not None and small.shard.source.kind == "fractal"
    for kept in ("optim", "augment"):
        assert getattr(small, kept) == getattr(big, kept), kept
    assert (small.model.name, small.model.pool, small.model.head) == (
        big.model.name,
        big.model.pool,
        big.model.head,
    )
    assert small.deepspeed.zero_stage == big.deepspeed.zero_stage


@pytest.fixture(scope="module")
def pretrained_tiny(tmp_path_factory, ray_local) -> Path:
    tmp = tmp_path_factory.mktemp("runlocal")
    _run("pretrain", CONFIGS / "smoke_cpu.yaml", tmp / "smoke", tmp)
    return tmp / "smoke" / "checkpoints"


@pytest.mark.parametrize("recipe", PRETRAIN, ids=lambda p: p.stem)
def test_every_pretraining_recipe_runs_under_runlocal(recipe, tmp_path, ray_local):
    _run("pretrain", recipe, tmp_path / "run", tmp_path)


@pytest.mark.parametrize("recipe", FINETUNE, ids=lambda p: p.stem)
def test_every_finetuning_recipe_runs_under_runlocal(recipe, pretrained_tiny, tmp_path):
    summary = _run("finetune", recipe, tmp_path / "run", tmp_path, "--from", str(pretrained_tiny))
    assert Path(summary["export_dir"], "model.safetensors").is_file()
