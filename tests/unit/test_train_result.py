"""The Trainer's typed result and its summary.json form: the same keys, in the same order, as
the dict it replaces; the sample-key audit as its own small object."""

from __future__ import annotations

import json

from pipelines.distributed import DistContext
from pipelines.layout import SAMPLE_KEYS_DIR
from pipelines.run_storage import RunDir
from pipelines.train.result import TrainResult
from pipelines.train.sample_keys import SampleKeyAudit

from train_fixtures import as_config, tiny_job

SUMMARY_KEYS = [
    "stage",
    "status",
    "steps",
    "epoch",
    "samples_seen",
    "world_size",
    "nodes",
    "final_train_loss",
    "val_top1",
    "val_top5",
    "val_loss",
    "images_per_sec",
    "data_wait_frac",
    "mfu",
    "mfu_measured_peak",
    "mfu_peak",
    "tracking_complete",
    "fast_path",
    "numerics",
    "peak_memory_bytes",
    "checkpoint",
    "resumed_from",
    "num_classes",
]


def result(**changes) -> TrainResult:
    overall = {  # what MetricsLogger.finish() returns without a teacher
        "images_per_sec": 100.0,
        "data_wait_frac": 0.1,
        "mfu": 0.2,
        "mfu_measured_peak": 0.3,
        "mfu_peak": "measured",
        "tracking_complete": True,
    }
    fields = {
        "stage": "pretrain",
        "status": "finished",
        "steps": 8,
        "epoch": 0,
        "samples_seen": 256,
        "world_size": 2,
        "nodes": {"local": [0, 1]},
        "final_train_loss": 2.0,
        "val_top1": 0.5,
        "val_top5": 0.9,
        "val_loss": 1.5,
        **overall,
        "fast_path": "fast path: off",
        "numerics": {"torch_threads": 1},
        "peak_memory_bytes": None,
        "checkpoint": "/run/checkpoints/step_0000008",
        "resumed_from": None,
        "num_classes": 10,
        "fewshot": {"fewshot/5shot_top1": 0.4},
        "loader": {"samples_read": 256, "samples_skipped": 0},
    }
    return TrainResult(**{**fields, **changes})


def test_the_summary_form_has_the_keys_of_the_old_dict_in_order():
    summary = result().to_summary()
    loader = ["loader_samples_read", "loader_samples_skipped"]
    assert list(summary) == [*SUMMARY_KEYS, "fewshot/5shot_top1", *loader]
    assert summary["loader_samples_read"] == 256 and summary["fewshot/5shot_top1"] == 0.4
    assert summary["nodes"] == {"local": [0, 1]} and summary["mfu_peak"] == "measured"
    json.dumps(summary)
    with_teacher = result(mfu_with_teacher=0.25).to_summary()
    at = SUMMARY_KEYS.index("mfu_measured_peak") + 1
    assert list(with_teacher)[at] == "mfu_with_teacher" and with_teacher["mfu_with_teacher"] == 0.25


def _run(tmp_path) -> RunDir:
    config = as_config(tiny_job(tmp_path / "shards", tmp_path))
    return RunDir.open(str(tmp_path / "run"), config.cluster, "local")


def _lines(run: RunDir, name: str) -> list[dict]:
    text = run.path(SAMPLE_KEYS_DIR, name).read_text()
    return [json.loads(line) for line in text.splitlines()]


def test_the_sample_key_audit_records_and_cuts_back_on_resume(tmp_path):
    run = _run(tmp_path)
    for rank in (0, 1):
        audit = SampleKeyAudit.start(
            enabled=True, run=run, ctx=DistContext(rank=rank, world_size=2), resume_step=None
        )
        for step in (1, 2, 3):
            audit.record(step=step, epoch=0, keys=[f"r{rank}s{step}"])
        audit.sync()
    resumed = SampleKeyAudit.start(enabled=True, run=run, ctx=DistContext(), resume_step=2)
    resumed.record(step=3, epoch=0, keys=["again"])
    assert [r["keys"] for r in _lines(run, "rank00000.jsonl")] == [["r0s1"], ["r0s2"], ["again"]]
    # rank 1 is gone in the resumed run: what it read after step 2 was never committed
    assert [r["step"] for r in _lines(run, "rank00001.jsonl")] == [1, 2]


def test_the_sample_key_audit_off_writes_nothing(tmp_path):
    run = _run(tmp_path)
    audit = SampleKeyAudit.start(enabled=False, run=run, ctx=DistContext(), resume_step=3)
    audit.record(step=1, epoch=0, keys=["a"])
    audit.sync()
    assert not run.path(SAMPLE_KEYS_DIR).exists()
