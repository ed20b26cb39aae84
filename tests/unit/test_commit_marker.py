"""The commit marker: every rank reports {name: {size, sha256}}, rank 0 writes
the union; loading requires every rank's files and verifies each one's size and sha256; a 0.1
marker (sizes only) is accepted with a notice. `vitpipe export` refuses non-finite weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from launch.cli import main

FIXTURE = Path(__file__).parents[1] / "fixtures" / "ckpt_v0_1" / "checkpoints" / "step_0000004"


def fake_checkpoint(folder: Path, world_size: int = 2) -> list[dict]:
    """A ZeRO-2 folder's files, each rank's report of what it wrote."""
    from pipelines.checkpoint import marker as markers

    folder.mkdir(parents=True)
    names: list[list[str]] = [[] for _ in range(world_size)]
    for rank in range(world_size):
        for name in (
            f"vitpipe_rank{rank:05d}.json",
            f"vitpipe_rank{rank:05d}.safetensors",
            f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt",
        ):
            (folder / name).write_bytes(f"{name} of rank {rank}".encode() * 10)
            names[rank].append(name)
    (folder / "mp_rank_00_model_states.pt").write_bytes(b"model" * 100)
    names[0].append("mp_rank_00_model_states.pt")
    return [markers.report(folder, group) for group in names]


def test_the_marker_is_the_union_of_every_rank_report_and_verifies_hashes(tmp_path):
    from pipelines.checkpoint import marker as markers
    from pipelines.errors import CheckpointError

    folder = tmp_path / "step_0000010"
    reports = fake_checkpoint(folder)
    marker = markers.build(10, 2, reports, {"zero_stage": 2})
    assert marker["files"]["zero_pp_rank_1_mp_rank_00_optim_states.pt"]["rank"] == 1
    markers.write(folder, marker)
    assert markers.check(folder, markers.read(folder)) == markers.Check()

    # Same-size byte flips in optimizer state: found by the hash, not by the size.
    victim = folder / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    data = bytearray(victim.read_bytes())
    data[5] ^= 0xFF
    victim.write_bytes(bytes(data))
    assert markers.check(folder, marker, hashes=False).problem is None
    assert "does not match its sha256" in markers.check(folder, marker).problem

    with pytest.raises(CheckpointError, match="1 of 2 ranks"):
        markers.build(10, 2, reports[:1], {"zero_stage": 2})


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda m: m.update(files={}), "does not list vitpipe_rank00000"),
        (
            lambda m: m["files"].pop("zero_pp_rank_1_mp_rank_00_optim_states.pt"),
            "does not list (bf16_)?zero_pp_rank_1",
        ),
        (lambda m: m["files"].pop("vitpipe_rank00001.json"), "does not list vitpipe_rank00001"),
        (
            lambda m: m["files"].update({"../../etc/passwd": m["files"]["vitpipe_rank00000.json"]}),
            "leaves its folder",
        ),
        (lambda m: m["files"]["vitpipe_rank00000.json"].update(sha256="x"), "not a hex digest"),
        (lambda m: m["files"]["vitpipe_rank00000.json"].update(size=3), "the marker says 3"),
        (lambda m: m.update(world_size=3), "does not list vitpipe_rank00002"),
    ],
)
def test_an_edited_marker_is_refused(tmp_path, edit, problem):
    from pipelines.checkpoint import marker as markers

    folder = tmp_path / "step_0000010"
    marker = markers.build(10, 2, fake_checkpoint(folder), {"zero_stage": 2})
    edit(marker)
    found = markers.check(folder, json.loads(json.dumps(marker))).problem
    assert found is not None and problem in found, found


def test_a_missing_file_is_refused(tmp_path):
    from pipelines.checkpoint import marker as markers

    folder = tmp_path / "step_0000010"
    marker = markers.build(10, 2, fake_checkpoint(folder), {"zero_stage": 2})
    (folder / "vitpipe_rank00001.safetensors").unlink()
    assert markers.check(folder, marker).problem == "file vitpipe_rank00001.safetensors is missing"


def test_a_0_1_marker_is_accepted_with_a_notice_that_it_has_no_hashes():
    from pipelines.checkpoint import marker as markers

    result = markers.check(FIXTURE, markers.read(FIXTURE))
    assert result.problem is None
    assert "0.1 marker" in result.notice and "no hashes" in result.notice
    assert "\n" not in result.notice


def test_export_refuses_non_finite_weights(tmp_path, capsys):
    folder = tmp_path / "checkpoints" / "step_0000004"
    shutil.copytree(FIXTURE, folder)
    optim = folder / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    state = torch.load(optim, weights_only=False)  # our own fixture
    flat = state["optimizer_state_dict"]["single_partition_of_fp32_groups"][0]
    with torch.no_grad():
        flat[3] = float("inf")
    torch.save(state, optim)
    marker = json.loads((folder / "COMMITTED.json").read_text())
    marker["files"][optim.name] = optim.stat().st_size
    (folder / "COMMITTED.json").write_text(json.dumps(marker))

    assert main(["export", str(folder), str(tmp_path / "out")]) != 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "non-finite weights" in err[0], err
    assert not (tmp_path / "out").exists()


def test_export_refuses_a_checkpoint_whose_marker_lists_no_files(tmp_path, capsys):
    folder = tmp_path / "checkpoints" / "step_0000004"
    shutil.copytree(FIXTURE, folder)
    marker = json.loads((folder / "COMMITTED.json").read_text())
    marker["files"] = {}
    (folder / "COMMITTED.json").write_text(json.dumps(marker))

    assert main(["export", str(folder), str(tmp_path / "out")]) != 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "does not list vitpipe_rank00000" in err[0], err
