"""No code runs from a checkpoint.

A pickle payload planted in a committed checkpoint (same size, marker made to agree: whoever can
write a checkpoint can rewrite its marker) is refused by `pretrain --resume auto`, `export`,
`eval --from` and `finetune --from` with one line naming the file, and never runs. Our own rank
state is JSON + safetensors; vitpipe 0.1's pickled one still reads through the vetted loader.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from launch.cli import main
from pipelines.errors import CheckpointError

# The end-to-end test imports only what vitpipe 0.1 had, so that it runs (and fails) there too.

FIXTURE = Path(__file__).parents[1] / "fixtures" / "ckpt_v0_1"
STEP = "step_0000004"


class Payload:
    """Unpickling this creates `path`: proof that code ran."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def plant(file: Path, proof: Path) -> None:
    """Replace `file` by a zip-format torch file of the same size whose pickle runs a payload."""
    size = file.stat().st_size
    pad = max(size - 4096, 0)
    for _ in range(8):
        torch.save({"payload": Payload(proof), "pad": torch.zeros(pad, dtype=torch.uint8)}, file)
        with zipfile.ZipFile(file, "a") as archive:
            archive.comment = b""
        short = size - file.stat().st_size
        if 0 <= short <= 60000:
            with zipfile.ZipFile(file, "a") as archive:
                archive.comment = b"#" * short
            break
        pad += short - 1000
    assert file.stat().st_size == size


def agree(folder: Path) -> None:
    """Rewrite the marker's entries to match the files (sizes, and sha256 where it has them)."""
    marker = json.loads((folder / "COMMITTED.json").read_text())
    for name, entry in marker["files"].items():
        data = (folder / name).read_bytes()
        fresh = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        marker["files"][name] = fresh["size"] if isinstance(entry, int) else {**entry, **fresh}
    (folder / "COMMITTED.json").write_text(json.dumps(marker))


@pytest.fixture
def fixture_copy(tmp_path) -> tuple[Path, Path]:
    """(run dir with the 0.1 checkpoint, job config YAML) in tmp_path."""
    shutil.copytree(FIXTURE / "shards", tmp_path / "shards")
    run_dir = tmp_path / "run"
    shutil.copytree(FIXTURE / "checkpoints", run_dir / "checkpoints")
    raw = yaml.safe_load((FIXTURE / "config.yaml").read_text())
    raw["data"]["train_shards"] = str(tmp_path / "shards")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    return run_dir, config


@pytest.mark.parametrize("planted", ["vitpipe_rank00000.pt", "mp_rank_00_model_states.pt"])
def test_a_planted_payload_is_refused_by_every_command_and_never_runs(
    fixture_copy, tmp_path, capsys, planted
):
    run_dir, config = fixture_copy
    folder = run_dir / "checkpoints" / STEP
    proof = tmp_path / "PAYLOAD_RAN"
    plant(folder / planted, proof)
    agree(folder)
    commands = {
        "export": ["export", str(folder), str(tmp_path / "export")],
        "eval": [
            "eval",
            "-c",
            str(config),
            "--from",
            str(folder),
            "--run-dir",
            str(tmp_path / "e"),
        ],
        "finetune": [
            "finetune",
            "-c",
            str(config),
            "--from",
            str(folder),
            "--run-dir",
            str(tmp_path / "f"),
            "--no-progress",
        ],
        "pretrain": ["pretrain", "-c", str(config), "--run-dir", str(run_dir), "--no-progress"],
    }
    for name, argv in commands.items():
        code = main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert code != 0, name
        assert not proof.exists(), f"{name} ran the payload"
        assert len(err) == 1 and err[0].startswith("error: "), (name, err)
        assert "refused to load" in err[0] and "/" + planted in err[0], (name, err)
        assert "outside the checkpoint allowlist" in err[0] and "io.open" in err[0], (name, err)


def test_legacy_and_unreadable_pickles_are_refused_without_running(tmp_path):
    from pipelines.checkpoint.safe_load import safe_load, weights_only_loads

    proof = tmp_path / "PAYLOAD_RAN"
    legacy = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(2)}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match="not a zip-format torch file"):
        safe_load(legacy)
    stack_global = tmp_path / "proto4.pt"
    torch.save({"p": Payload(proof)}, stack_global, pickle_protocol=4)
    with pytest.raises(CheckpointError, match="cannot be checked without running it"):
        safe_load(stack_global)
    # DeepSpeed calls torch.load(weights_only=False) itself; inside weights_only_loads() that is
    # still the restricted loader, so a file swapped after vetting cannot run either.
    planted = tmp_path / "planted.pt"
    torch.save({"p": Payload(proof)}, planted)
    with weights_only_loads(), pytest.raises(Exception, match="io.open"):
        torch.load(planted, weights_only=False)
    assert not proof.exists()


def test_rank_state_is_json_and_safetensors_and_restores_every_stream(tmp_path):
    from pipelines.checkpoint.rank_state import (
        read_rank_state,
        rng_state,
        set_rng_state,
        write_rank_state,
    )

    random.seed(3)
    np.random.seed(4)
    torch.manual_seed(5)
    random.gauss(0, 1), np.random.standard_normal()  # noqa: B018  (cached gaussians in the state)
    loader = {"epoch": 2, "position": 7, "history": [{"position": 3}]}
    paths = write_rank_state(tmp_path, 3, loader, rng_state())
    assert sorted(p.name for p in paths) == [
        "vitpipe_rank00003.json",
        "vitpipe_rank00003.safetensors",
    ]
    expected = (random.random(), np.random.standard_normal(3).tolist(), torch.rand(3).tolist())
    for path in paths:
        assert not zipfile.is_zipfile(path)  # no pickle anywhere
    got_loader, rng = read_rank_state(tmp_path, 3)
    set_rng_state(rng)
    assert got_loader == loader
    assert (
        random.random(),
        np.random.standard_normal(3).tolist(),
        torch.rand(3).tolist(),
    ) == expected


def test_a_0_1_rank_state_reads_through_the_vetted_loader_and_upgrades(tmp_path):
    from pipelines.checkpoint import marker as markers
    from pipelines.checkpoint.rank_state import read_rank_state
    from pipelines.checkpoint.upgrade import upgrade

    folder = tmp_path / STEP
    shutil.copytree(FIXTURE / "checkpoints" / STEP, folder)
    trusted = torch.load(folder / "vitpipe_rank00001.pt", weights_only=False)  # our own fixture
    loader, rng = read_rank_state(folder, 1)
    assert loader == trusted["loader"]
    assert rng.python == trusted["rng"]["python"]
    assert torch.equal(rng.torch, trusted["rng"]["torch"])
    assert np.array_equal(rng.numpy[1], trusted["rng"]["numpy"][1])

    done = upgrade(tmp_path)  # a run dir: both 0.1 rank states; the marker gains hashes
    assert sorted(Path(d.source).name for d in done) == [
        "vitpipe_rank00000.pt",
        "vitpipe_rank00001.pt",
    ]
    assert not (folder / "vitpipe_rank00001.pt").exists()
    again, rng_again = read_rank_state(folder, 1)
    assert again == loader and rng_again.python == rng.python
    marker = markers.read(folder)
    assert marker["format"] == markers.FORMAT
    assert markers.check(folder, marker).problem is None


def test_upgrade_makes_a_trusted_file_with_a_foreign_class_loadable(tmp_path):
    from argparse import Namespace

    from pipelines.checkpoint.safe_load import safe_load, vet_file
    from pipelines.checkpoint.upgrade import upgrade

    file = tmp_path / "model.pt"
    torch.save({"module": {"w": torch.ones(2)}, "args": Namespace(lr=0.1)}, file)
    with pytest.raises(CheckpointError, match="argparse.Namespace"):
        vet_file(file)
    (done,) = upgrade(file)
    assert "argparse.Namespace" in done.note
    loaded = safe_load(file)
    assert loaded["args"] == {"lr": 0.1} and torch.equal(loaded["module"]["w"], torch.ones(2))


def test_deepspeed_fp16_loss_scalers_load_weights_only(tmp_path):
    """fp16 ZeRO checkpoints hold DeepSpeed's (Dynamic)LossScaler objects (CPU DeepSpeed cannot
    write fp16, so this builds the objects directly): they load through the allowlist."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum

    from pipelines.checkpoint.safe_load import safe_load

    path = tmp_path / "optim.pt"
    dynamic = DynamicLossScaler(
        init_scale=2**16,
        scale_window=1000,
        min_scale=1,
        delayed_shift=2,
        consecutive_hysteresis=False,
        dtype=torch.float16,
    )
    scalers = {"dynamic": dynamic}
    scalers["static"] = LossScaler(scale=128.0)
    torch.save({"loss_scaler": scalers, "zero_stage": ZeroStageEnum.gradients}, path)
    loaded = safe_load(path)
    assert loaded["loss_scaler"]["dynamic"].cur_scale == 2**16
    assert loaded["loss_scaler"]["dynamic"].dtype == torch.float16
    assert loaded["loss_scaler"]["static"].cur_scale == 128.0
    assert loaded["zero_stage"] is ZeroStageEnum.gradients


def test_universal_conversion_records_hashes_and_is_vetted_before_loading(tmp_path):
    from pipelines.checkpoint.files import open_checkpoint
    from pipelines.checkpoint.safe_load import vet_folder
    from pipelines.checkpoint.universal import convert_to_universal

    shutil.copytree(FIXTURE / "checkpoints", tmp_path / "checkpoints")
    checkpoint = open_checkpoint(tmp_path / "checkpoints" / STEP)
    out = convert_to_universal(checkpoint)
    done = json.loads((out / "CONVERTED").read_text())
    victim = next(iter(sorted(out.rglob("fp32.pt"))))
    name = victim.relative_to(out).as_posix()
    assert done["files"][name]["sha256"] == hashlib.sha256(victim.read_bytes()).hexdigest()
    assert vet_folder(out)  # what engine.load runs on every rank first

    # Changed behind CONVERTED's back: converted again from the (vetted) source.
    victim.write_bytes(victim.read_bytes() + b"\0")
    assert convert_to_universal(checkpoint) == out
    assert done == json.loads((out / "CONVERTED").read_text())

    # Planted, with CONVERTED made to agree: reused, but refused before anything unpickles it.
    proof = tmp_path / "PAYLOAD_RAN"
    plant(victim, proof)
    done["files"][name]["sha256"] = hashlib.sha256(victim.read_bytes()).hexdigest()
    (out / "CONVERTED").write_text(json.dumps(done))
    convert_to_universal(checkpoint)
    with pytest.raises(CheckpointError, match="io.open"):
        vet_folder(out)
    assert not proof.exists()


def test_a_refused_stored_checkpoint_names_its_uri_and_upgrading_that_uri_works(
    s3_store, tmp_path, capsys
):
    from argparse import Namespace

    from pipelines.storage import locate
    from pipelines.transfer import upload_dir

    folder = tmp_path / STEP
    shutil.copytree(FIXTURE / "checkpoints" / STEP, folder)
    model_file = folder / "mp_rank_00_model_states.pt"
    trusted = torch.load(model_file, weights_only=False)  # our own fixture
    trusted["args"] = Namespace(lr=0.1)  # a class outside the allowlist, as old DeepSpeed saved
    torch.save(trusted, model_file)
    agree(folder)
    stored = locate(f"{s3_store}/upgrade-hint/run/checkpoints/{STEP}")
    upload_dir(folder, stored)
    file_uri = stored.join("mp_rank_00_model_states.pt").uri

    assert main(["export", stored.uri, str(tmp_path / "export")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"refused to load {file_uri}: it names argparse.Namespace" in err[0]
    assert f"`vitpipe checkpoint upgrade {file_uri}`" in err[0], err  # not the scratch copy

    assert main(["checkpoint", "upgrade", file_uri]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["upgraded"] == file_uri
    assert main(["export", stored.uri, str(tmp_path / "export")]) == 0
