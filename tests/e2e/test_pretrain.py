"""Pretraining end to end on 2 Ray CPU workers with real DeepSpeed and real MLflow (SQLite)."""

from __future__ import annotations

import json

import pytest

from launch.stages.training import run_training_stage

from train_fixtures import as_config, summary, tiny_job, train_losses

pytestmark = pytest.mark.slow


def test_pretrain_learns_and_records_everything(fractal_shards, tmp_path, ray_local):
    raw = tiny_job(
        fractal_shards,
        tmp_path,
        model={"head": "linear"},  # the tanh MLP head learns too slowly for a 48-step test
        augment={"scale": [0.8, 1.0]},
        schedule={"decay": "constant"},
        train={"total_steps": 48, "eval_every_n_steps": 24},
        checkpoint={"every_n_steps": 24},
    )
    run_dir = tmp_path / "run"
    result = run_training_stage(as_config(raw), run_dir=run_dir, progress=False)

    assert result["status"] == "finished" and result["steps"] == 48
    assert result["world_size"] == 2
    losses = train_losses(run_dir)
    assert sorted(losses) == list(range(1, 49))
    first = sum(losses[s] for s in range(1, 6)) / 5
    last = sum(losses[s] for s in range(44, 49)) / 5
    assert last < first - 0.1, losses

    written = summary(run_dir)
    for key in (
        "stage",
        "status",
        "steps",
        "samples_seen",
        "world_size",
        "final_train_loss",
        "val_top1",
        "images_per_sec",
        "checkpoint",
        "mlflow_run_id",
        "mlflow_tracking_uri",
        "data_wait_frac",
    ):
        assert written[key] is not None, key
    assert written["samples_seen"] == 48 * 32
    assert (run_dir / "config.resolved.yaml").is_file()
    assert (
        json.loads((run_dir / "deepspeed_config.json").read_text())["zero_optimization"]["stage"]
        == 2
    )
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert {"lr", "grad_norm", "images_per_sec", "data_wait_frac", "mfu", "epoch"} <= set(
        records[0]
    )
    assert any("val/top1" in r for r in records)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=written["mlflow_tracking_uri"])
    run = client.get_run(written["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["deepspeed.zero_stage"] == "2"
    assert run.data.params["world_size"] == "2"
    assert "version.torch" in run.data.params
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == 48
    assert "val/top1" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {
        "config.resolved.yaml",
        "deepspeed_config.json",
        "manifest.json",
        "summary.json",
    } <= artifacts


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_every_zero_stage_trains(fractal_shards, tmp_path, ray_local, stage):
    raw = tiny_job(
        fractal_shards,
        tmp_path,
        deepspeed={"zero_stage": stage},
        train={"total_steps": 3},
        checkpoint={"every_n_steps": None},
        tracking={"enabled": False},
    )
    result = run_training_stage(as_config(raw), run_dir=tmp_path / "run", progress=False)
    assert result["status"] == "finished" and result["steps"] == 3
    assert all(loss == loss for loss in train_losses(tmp_path / "run").values())  # no NaN
    assert (tmp_path / "run" / "checkpoints" / "step_0000003" / "COMMITTED.json").is_file()
