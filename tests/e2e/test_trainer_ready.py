"""A Trainer is ready when built: the resume, the metrics and the sample-key audit are set up by
construction, so `train_step()` runs on its own, and `fit()` then carries on from there."""

from __future__ import annotations

import json

import pytest

from pipelines.distributed import DistContext
from pipelines.train.checkpointer import plan_launch
from pipelines.train.request import TrainRequest
from pipelines.train.trainer import Trainer

from train_fixtures import as_config, tiny_job

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ctx(process_group) -> DistContext:
    return process_group


def test_train_step_runs_alone_after_construction(fractal_shards, tmp_path, ctx):
    raw = tiny_job(
        fractal_shards,
        tmp_path,
        data={"num_workers": 0},
        train={"total_steps": 4, "record_sample_keys": True},
        checkpoint={"every_n_steps": 2},
        cluster={"num_workers": 1},
        tracking={"enabled": False},
    )
    run_dir = tmp_path / "run"
    request, _ = plan_launch(TrainRequest(config=as_config(raw), run_dir=str(run_dir)))
    trainer = Trainer(request, ctx)
    trainer.train_step()
    trainer.train_step()
    assert trainer.progress.step == 2 and trainer.progress.samples_seen == 64
    lines = (run_dir / "sample_keys" / "rank00000.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 1, 2, 2]  # accum 2

    result = trainer.fit()
    assert result is not None and result.status == "finished" and result.steps == 4
    assert result.to_summary()["checkpoint"].endswith("step_0000004")
