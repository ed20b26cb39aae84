"""The fast path (torch.compile, bf16 autocast, device prefetch) changes speed, not training:
same loss curve within bf16 noise, and exact resume with batches read a step ahead."""

from __future__ import annotations

import pytest
from torch._dynamo.utils import counters

from launch.stages.training import run_training_stage

from train_fixtures import as_config, summary, tiny_job, train_losses

pytestmark = pytest.mark.slow

FAST = {"compile": True, "autocast": True, "prefetch_to_device": True}
PLAIN = {"compile": False, "autocast": False, "prefetch_to_device": False}


def _run(shards, tmp_path, name: str, train: dict, **kwargs) -> dict[int, float]:
    raw = tiny_job(
        shards,
        tmp_path,
        deepspeed={"zero_stage": 2},
        train={"total_steps": 6, "micro_batch_size": 32, **train},
        checkpoint={"every_n_steps": 3},
        tracking={"enabled": False},
        cluster={"num_workers": 1},
    )
    run_dir = tmp_path / name
    run_training_stage(as_config(raw), run_dir=run_dir, launcher="local", progress=False, **kwargs)
    return train_losses(run_dir)


def test_compile_and_bf16_autocast_follow_the_fp32_eager_loss_curve(fractal_shards, tmp_path):
    plain = _run(fractal_shards, tmp_path, "plain", PLAIN)
    graphs_before = counters["stats"]["unique_graphs"]
    fast = _run(fractal_shards, tmp_path, "fast", FAST)
    assert counters["stats"]["unique_graphs"] > graphs_before  # dynamo really compiled the model
    assert sorted(fast) == sorted(plain) == list(range(1, 7))
    for step in plain:
        assert fast[step] == pytest.approx(plain[step], abs=0.05), (step, plain, fast)
    assert fast != plain  # bf16 really ran: identical curves would mean the switches did nothing
    written = summary(tmp_path / "fast")
    assert written["fast_path"] == "fast path: compile, autocast, prefetch"
    assert summary(tmp_path / "plain")["fast_path"] == "fast path: off"
    assert 0.0 <= written["data_wait_frac"] < 1.0


def test_resume_with_device_prefetch_repeats_no_batch(fractal_shards, tmp_path):
    prefetch = {**PLAIN, "prefetch_to_device": True}
    whole = _run(fractal_shards, tmp_path, "whole", prefetch)
    _run(fractal_shards, tmp_path, "split", prefetch, stop_at_step=3)
    resumed = _run(fractal_shards, tmp_path, "split", prefetch)
    assert resumed == whole
