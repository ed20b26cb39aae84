"""`vitpipe shard` as a user meets it when things go wrong: shards missing from a brace pattern
are counted and named in its one line; a shard changed in place with its mtime put back is
refused by the loader with a command that fixes it, and that command does; SIGTERM stops the
stage cleanly (status `stopped`, summary.json, no Ray stack dump, its Ray processes gone) and
running it again continues."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from launch.cli import main
from pipelines.errors import DataError

from shard_fixtures import make_loader, relabel_to_zero, write_shard_set
from train_fixtures import child_env, summary

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")
ROOT = Path(__file__).parents[2]
COUNTS = [8, 8, 8]  # three shards; the pattern names five


@pytest.fixture(scope="module")
def users_shards(tmp_path_factory) -> Path:
    """Three WebDataset shards (labels 0..4) of a user, written once for the module."""
    folder = tmp_path_factory.mktemp("users") / "in"
    write_shard_set(folder, {"train": COUNTS}, num_classes=5)
    (folder / "manifest.json").unlink()  # theirs, not ours
    return folder


def _config(tmp_path: Path, raw_shard: dict, **sections: dict) -> Path:
    path = tmp_path / "shard.yaml"
    raw = {"shard": raw_shard, "tracking": {"enabled": False}, **sections}
    path.write_text(yaml.safe_dump(raw))
    return path


def test_a_shard_changed_in_place_is_refused_until_the_named_command_reindexes_it(
    users_shards, tmp_path, ray_local, capsys
):
    shards = tmp_path / "in"
    shutil.copytree(users_shards, shards)
    config = _config(
        tmp_path,
        {
            "source": {"kind": "webdataset", "urls": f"{shards}/train-{{000000..000004}}.tar"},
            "output": str(tmp_path / "index"),
            "val_fraction": 0.0,
        },
    )
    assert main(["shard", "-c", str(config), "--no-progress"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "24 samples" in line and "0 samples rejected" in line, line
    assert "2 shards missing (train-000003.tar, train-000004.tar; all in rejected.parquet)" in line
    assert summary(tmp_path / "index")["num_shards_missing"] == 2

    relabel_to_zero(shards / "train-000001.tar", keep_mtime=True)
    with pytest.raises(DataError) as refused:
        list(make_loader(tmp_path / "index", num_workers=0))
    advice = "`vitpipe shard -c <its shard config> --rehash train-000001.tar`"
    assert "train-000001.tar: content does not match" in str(refused.value)
    assert advice in str(refused.value)

    argv = ["shard", "-c", str(config), "--rehash", "train-000001.tar", "--no-progress"]
    assert main(argv) == 0
    assert summary(tmp_path / "index")["num_shards_read"] == 1
    loader = make_loader(tmp_path / "index", num_workers=0, train=False, split="train")
    labels = {k: int(y) for b in loader for k, y in zip(b["key"], b["label"], strict=True)}
    assert len(labels) == 24
    assert {y for k, y in labels.items() if k.startswith("train001")} == {0}
    assert main(["shard", "-c", str(config), "--rehash", "nope.tar"]) == 1
    assert "--rehash nope.tar: not a shard" in capsys.readouterr().err


def test_sigterm_stops_the_shard_stage_cleanly_and_a_rerun_continues(tmp_path, ray_local):
    from launch.stages.shard import run_shard
    from pipelines.config import load_config

    out = tmp_path / "shards"
    config = _config(
        tmp_path,
        {
            "source": {
                "kind": "fractal",
                "num_classes": 4,
                "images_per_class": 10,
                "image_size": 32,
                "num_points": 500,
            },
            "output": str(out),
            "samples_per_shard": 2,
            "image_format": "png",
            "val_fraction": 0.0,
            "num_workers": 1,
        },
    )
    job = subprocess.Popen(
        [sys.executable, "-m", "launch.cli", "shard", "-c", str(config), "--no-progress"],
        env={**child_env(), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"},
        cwd=ROOT,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        state = out / "_state"
        while not (state.is_dir() and any(state.glob("*.json"))):
            assert job.poll() is None, job.communicate()[1][-3000:]
            time.sleep(0.05)
        ray_processes = psutil.Process(job.pid).children(recursive=True)  # its local Ray
        job.send_signal(signal.SIGTERM)
        stdout, stderr = job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert job.returncode == 0, stderr[-3000:]
    assert "SIGTERM received" not in stderr and "PC: @" not in stderr, stderr[-3000:]
    assert stdout.strip().splitlines()[-1].startswith("shard: stopped after "), stdout
    written = summary(out)
    assert written["status"] == "stopped" and 1 <= written["num_shards_done"] < 20
    assert not (out / "manifest.json").exists()
    deadline = time.monotonic() + 15
    while any(_alive(p) for p in ray_processes) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [p.pid for p in ray_processes if _alive(p)], "Ray processes outlived the stage"

    again = run_shard(load_config(config), progress=False)
    assert again["status"] == "finished" and again["num_shards"] == 20
    assert again["num_shards_skipped"] >= written["num_shards_done"]
    assert json.loads((out / "manifest.json").read_text())["classes"]


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
