"""`vitpipe run`: shard -> pretrain -> finetune (and from scratch) -> eval, one MLflow parent run."""

from __future__ import annotations

import json

import pytest
import yaml

from launch.cli import main as cli_main

from train_fixtures import TINY_HYBRID, tiny_job

pytestmark = pytest.mark.slow


def pipeline_file(tmp_path, fractal_shards, digits_shards):
    # The model is the tiny hybrid: `vitpipe run` takes every family the way it takes a ViT.
    pretrain = tiny_job(
        fractal_shards,
        tmp_path,
        model=TINY_HYBRID,
        train={"total_steps": 3},
        checkpoint={"every_n_steps": None},
    )
    finetune = tiny_job(
        digits_shards,
        tmp_path,
        model=TINY_HYBRID,
        finetune={"mode": "full"},
        augment={"hflip": 0.0},
        train={"total_steps": 3},
        checkpoint={"every_n_steps": None},
    )
    # The curve's k-shot sets are written from this source; the main fine-tune reads the
    # prebuilt digits shards.
    finetune["shard"] = {
        "source": {"kind": "digits", "image_size": 32},
        "samples_per_shard": 500,
        "image_format": "png",
        "val_fraction": 0.2,
    }
    for stage in (pretrain, finetune):
        for section in ("name", "tracking", "cluster"):
            stage.pop(section)
    raw = {
        "name": "pipe",
        "shared": {
            "cluster": {"num_workers": 2},
            "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "pipe"},
        },
        "pretrain": pretrain,
        "finetune": finetune,
        "eval": {"fewshot_shots": [2]},
        "transfer": {
            "seeds": [0],
            "points": [
                {"shots": 2, "finetune": {"data": {"num_workers": 0}}},
                {"shots": "all"},
            ],
        },
    }
    path = tmp_path / "pipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_run_the_whole_pipeline(fractal_shards, digits_shards, tmp_path, ray_local, capsys):
    path = pipeline_file(tmp_path, fractal_shards, digits_shards)
    run_dir = tmp_path / "run"
    assert cli_main(["run", "-c", str(path), "--run-dir", str(run_dir), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "fine-tuned from the pretrained checkpoint" in out and "random initialisation" in out

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["elapsed_s"] > 0
    for key in ("pretrained_val_top1", "scratch_val_top1", "fewshot/2shot_top1"):
        assert 0 <= summary[key] <= 1, key
    assert summary["registered_model_uri"].startswith("models:/")
    for stage in ("pretrain", "finetune", "finetune_scratch", "eval", "fewshot"):
        assert (run_dir / stage / "summary.json").is_file(), stage

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=summary["mlflow_tracking_uri"])
    parent = client.get_run(summary["mlflow_run_id"])
    assert parent.info.status == "FINISHED"
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    stages = sorted(run.data.tags["vitpipe.stage"] for run in children)
    assert stages == ["eval", "eval", "finetune", "finetune", "pretrain"]

    # The label-efficiency curve: k=2 fine-tuned from both inits here; the all-labels points
    # are the main fine-tunes above.
    points = {(p["k"], p["init"]): p["val_top1"] for p in summary["transfer"]}
    assert set(points) == {
        (2, "pretrained"),
        (2, "scratch"),
        ("all", "pretrained"),
        ("all", "scratch"),
    }
    assert points[("all", "scratch")] == summary["scratch_val_top1"]
    assert set(summary["transfer_means"]) == {"pretrained", "scratch"}
    assert (run_dir / "transfer.png").stat().st_size > 0
    assert "transfer.png" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert "label efficiency" in out
    tuned = next(
        r
        for r in children
        if r.data.tags.get("vitpipe.lineage.pretrain_checkpoint")
        and r.data.tags["vitpipe.stage"] == "finetune"
    )
    assert tuned.data.tags["vitpipe.lineage.pretrain_checkpoint"] == summary["pretrain_checkpoint"]


def test_pipeline_config_errors_are_prefixed_with_the_stage(
    fractal_shards, digits_shards, tmp_path, capsys
):
    path = pipeline_file(tmp_path, fractal_shards, digits_shards)
    raw = yaml.safe_load(path.read_text())
    raw["pretrain"]["optim"]["lr"] = "3e-4"
    raw["finetune"]["trian"] = {}
    path.write_text(yaml.safe_dump(raw))
    assert cli_main(["check-config", "-c", str(path)]) == 2
    err = capsys.readouterr().err
    assert (
        "pretrain.optim.lr" in err and "finetune.trian: unknown key; did you mean 'train'?" in err
    )


def test_run_with_a_job_config_says_it_needs_a_pipeline(tmp_path, capsys):
    # A fine-tuning job config has a `finetune:` section too; it must not pass for a pipeline.
    path = tmp_path / "ft.yaml"
    path.write_text("name: ft\nfinetune:\n  mode: full\ntrain:\n  total_steps: 5\n")
    assert cli_main(["run", "-c", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "is a job config (no `pretrain:` section)" in err and len(err.splitlines()) == 1
    assert cli_main(["check-config", "-c", str(path)]) == 0


def test_unknown_pipeline_key_suggests_a_pipeline_field(tmp_path, capsys):
    path = tmp_path / "p.yaml"
    path.write_text("pretrain: {}\nfinetune: {}\nshard: {}\n")
    assert cli_main(["check-config", "-c", str(path)]) == 2
    assert "shard: unknown key; did you mean 'shared'?" in capsys.readouterr().err
