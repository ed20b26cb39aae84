"""Which checkpoint a launch resumes from: the driver chooses once with every check (model,
teacher, files), and the workers of a launch that Ray Train restarted continue from the newest
checkpoint that launch committed, not from the driver's choice (nor refuse under --resume never)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipelines.checkpoint import files
from pipelines.checkpoint import marker as markers
from pipelines.distributed import DistContext
from pipelines.errors import CheckpointError
from pipelines.layout import checkpoint_tag
from pipelines.storage import locate
from pipelines.train.checkpointer import Checkpointer, choose_checkpoint, plan_launch
from pipelines.train.model_init import architecture
from pipelines.train.request import TrainRequest
from vit_core import ViTConfig

from train_fixtures import as_config, tiny_job

CLASSES = 10


def request_for(tmp_path: Path, resume: str = "auto", **sections) -> TrainRequest:
    raw = tiny_job(tmp_path / "shards", tmp_path, model={"num_classes": CLASSES}, **sections)
    return TrainRequest(config=as_config(raw), run_dir=str(tmp_path / "run"), resume=resume)


def commit(run_dir: str, step: int, model: ViTConfig, **meta) -> Path:
    """A committed checkpoint (ZeRO-2, one rank) whose files are small, safe torch files."""
    folder = Path(run_dir) / "checkpoints" / checkpoint_tag(step)
    folder.mkdir(parents=True)
    names = ["mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"]
    for name in names:
        torch.save({"step": torch.tensor(step)}, folder / name)
    (folder / "vitpipe_rank00000.json").write_text("{}")
    names.append("vitpipe_rank00000.json")
    meta = {"zero_stage": 2, "vit_config": model.to_dict(), "teacher": None, **meta}
    files.commit(locate(str(folder)), step, [markers.report(folder, names)], meta)
    return folder


def resume_point(request: TrainRequest) -> str | None:
    """Where rank 0 of a (re)started worker group continues."""
    model = architecture(request, CLASSES)
    chosen = Checkpointer(request, DistContext(), architecture=model, classes=None).resume_from
    return chosen.uri if chosen is not None else None


def test_the_driver_choice_is_checked_and_handed_to_the_workers(tmp_path):
    request = request_for(tmp_path)
    model = architecture(request, CLASSES)
    commit(request.run_dir, 2, model)
    newest = commit(request.run_dir, 4, model)
    planned, found = plan_launch(request)
    assert found is not None and found.uri == planned.resume_from == locate(str(newest)).uri
    assert planned.launch_id and planned.launch_id != plan_launch(request)[0].launch_id
    assert resume_point(planned) == planned.resume_from
    fresh, none = plan_launch(request_for(tmp_path / "other"))
    assert none is None and fresh.resume_from is None and resume_point(fresh) is None


def test_a_restarted_launch_continues_from_its_own_newest_checkpoint(tmp_path):
    request = request_for(tmp_path)
    model = architecture(request, CLASSES)
    commit(request.run_dir, 2, model, launch_id="an-earlier-launch")
    planned, _ = plan_launch(request)
    assert resume_point(planned).endswith("step_0000002")
    commit(request.run_dir, 4, model, launch_id=planned.launch_id)
    commit(request.run_dir, 6, model, launch_id=planned.launch_id)
    assert resume_point(planned).endswith("step_0000006")
    commit(request.run_dir, 8, model, launch_id="another-launch")  # not this launch's
    assert resume_point(planned).endswith("step_0000006")


def test_a_restart_under_resume_never_continues_instead_of_refusing(tmp_path):
    request = request_for(tmp_path, resume="never")
    planned, found = plan_launch(request)
    assert found is None and planned.resume_from is None
    commit(request.run_dir, 2, architecture(request, CLASSES), launch_id=planned.launch_id)
    assert resume_point(planned).endswith("step_0000002")
    with pytest.raises(CheckpointError, match="already holds committed checkpoints"):
        plan_launch(request)  # a new launch still refuses to overwrite them


def test_the_launch_id_goes_into_every_marker(tmp_path):
    planned, _ = plan_launch(request_for(tmp_path))
    model = architecture(planned, CLASSES)
    checkpointer = Checkpointer(planned, DistContext(), architecture=model, classes=None)
    assert checkpointer.launch_id == planned.launch_id
    assert checkpointer._static_meta(model, None)["launch_id"] == planned.launch_id


def test_one_choice_runs_every_check(tmp_path):
    request = request_for(tmp_path)
    model = architecture(request, CLASSES)
    commit(request.run_dir, 2, model.replace(depth=model.depth + 1))
    with pytest.raises(CheckpointError, match="different model"):
        choose_checkpoint(request)

    request = request_for(tmp_path / "teacher")
    teacher = {"kind": "export", "path": "/t", "weights": [], "sha256": "0" * 64}
    commit(request.run_dir, 2, model, teacher=teacher)
    with pytest.raises(CheckpointError, match="trained with teacher"):
        choose_checkpoint(request)

    request = request_for(tmp_path / "changed")
    folder = commit(request.run_dir, 2, model)
    changed = bytearray((folder / "vitpipe_rank00000.json").read_bytes())
    changed[0:2] = b"[]"  # same size, other bytes
    (folder / "vitpipe_rank00000.json").write_bytes(bytes(changed))
    with pytest.raises(CheckpointError, match="sha256"):
        choose_checkpoint(request)
