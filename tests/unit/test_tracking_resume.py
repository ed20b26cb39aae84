"""Resuming against a tracking store that lacks the checkpoint's MLflow run (a run dir copied to
another machine, another tracking.uri) goes on in a new run that records where it came from;
against the store that has it, the same run continues."""

from __future__ import annotations

import logging

from pipelines.config import TrackingSection
from pipelines.tracking.mlflow_run import open_run


def test_a_run_missing_from_the_store_continues_in_a_tagged_new_run(tmp_path, caplog):
    from mlflow.tracking import MlflowClient

    first = TrackingSection(uri=f"sqlite:///{tmp_path / 'first.db'}", experiment="e")
    original = open_run(first, run_name="tiny-pretrain")
    checkpoint = str(tmp_path / "run" / "checkpoints" / "step_0000004")
    tags = {"vitpipe.stage": "pretrain", "vitpipe.resumed_from": checkpoint}

    again = open_run(first, run_name="tiny-pretrain", run_id=original.run_id, tags=tags)
    assert again.run_id == original.run_id  # the store has it: the same run continues

    # A run id from a checkpoint whose run lives in another store (a copied run dir).
    elsewhere = "f" * 32
    with caplog.at_level(logging.WARNING, logger="pipelines.tracking.mlflow_run"):
        moved = open_run(first, run_name="tiny-pretrain", run_id=elsewhere, tags=tags)
    assert moved is not None and moved.run_id not in (elsewhere, original.run_id)
    run = MlflowClient(moved.uri).get_run(moved.run_id)
    assert run.data.tags["vitpipe.resumed_mlflow_run_id"] == elsewhere
    assert run.data.tags["vitpipe.resumed_from"] == checkpoint
    assert run.info.status == "RUNNING"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and elsewhere in warnings[0] and "\n" not in warnings[0]
