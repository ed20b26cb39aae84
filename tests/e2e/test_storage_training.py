"""Training with run storage on a real S3-compatible server on 127.0.0.1: the shards
and the whole run dir live in `s3://`; a run stopped at a step whose node scratch is then
deleted continues with `--resume auto` bit-exactly; `vitpipe export s3://.../step_N` works."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import pytest
import torch

from launch.cli import main
from launch.stages.shard import run_shard
from launch.stages.training import run_training_stage
from pipelines.checkpoint.export import consolidated_state_dict
from pipelines.checkpoint.files import latest_checkpoint, local_copy
from pipelines.config import config_from_dict
from pipelines.storage import locate

from train_fixtures import as_config, tiny_job

pytestmark = pytest.mark.slow

TOTAL = 4


def _losses(run_uri: str) -> dict[int, float]:
    text = locate(run_uri).join("metrics.jsonl").read_text()
    records = [json.loads(line) for line in text.splitlines() if line.strip()]
    return {r["step"]: r["train/loss"] for r in records if "train/loss" in r}


def _weights(run_uri: str, tmp: Path) -> dict[str, torch.Tensor]:
    checkpoint = latest_checkpoint(locate(run_uri).join("checkpoints"))
    return consolidated_state_dict(local_copy(checkpoint, tmp, names=None))


@pytest.fixture(scope="module")
def storage(s3_store, ray_local, tmp_path_factory):
    """Fractal shards written to the bucket, and a job that trains on them into the bucket."""
    prefix = f"{s3_store}/training-{uuid.uuid4().hex[:6]}"
    shards = f"{prefix}/shards"
    source = {
        "kind": "fractal",
        "num_classes": 4,
        "images_per_class": 24,
        "image_size": 32,
        "num_points": 1000,
    }
    shard = {"source": source, "output": shards, "samples_per_shard": 32, "image_format": "png"}
    run_shard(config_from_dict({"shard": shard, "tracking": {"enabled": False}}), progress=False)
    tmp = tmp_path_factory.mktemp("storage")
    scratch = tmp / "scratch"
    raw = tiny_job(
        shards,
        tmp,
        augment={"mixup_alpha": 0.2},
        train={"total_steps": TOTAL},
        checkpoint={"every_n_steps": 2},
        tracking={"enabled": False},
        cluster={"local_scratch": str(scratch / "{node_id}")},
        data={"num_workers": 0},
    )
    reference = f"{prefix}/reference"
    run_training_stage(as_config(raw), run_dir=reference, progress=False)
    return prefix, raw, reference, scratch


def test_a_stopped_run_continues_from_storage_bit_exactly(storage, tmp_path):
    prefix, raw, reference, scratch = storage
    run = f"{prefix}/stopped"
    first = run_training_stage(as_config(raw), run_dir=run, progress=False, stop_at_step=2)
    assert first["status"] == "stopped" and first["checkpoint"].startswith(f"{run}/checkpoints")
    stored = {e.name for e in locate(run).list_dir()}
    assert {"checkpoints", "metrics.jsonl", "summary.json", "config.resolved.yaml"} <= stored
    assert locate(run).join("checkpoints", "step_0000002", "COMMITTED.json").is_file()
    assert locate(run).join("checkpoints", "latest").read_text().strip() == "step_0000002"
    shutil.rmtree(scratch)  # node scratch may vanish between a stop and a resume

    second = run_training_stage(as_config(raw), run_dir=run, progress=False)
    assert second["status"] == "finished" and second["resumed_from"].endswith("step_0000002")
    assert json.loads(locate(run).join("summary.json").read_text())["steps"] == TOTAL

    expected, got = _losses(reference), _losses(run)
    assert sorted(got) == list(range(1, TOTAL + 1))
    assert all(got[s] == expected[s] for s in range(3, TOTAL + 1)), (got, expected)
    a, b = _weights(reference, tmp_path / "a"), _weights(run, tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_export_reads_a_checkpoint_from_storage(storage, tmp_path, capsys):
    _, _, reference, _ = storage
    step = f"{reference}/checkpoints/step_{TOTAL:07d}"
    assert main(["export", step, str(tmp_path / "out")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["step"] == TOTAL and out["source"] == step
    assert (tmp_path / "out" / "model.safetensors").is_file()
