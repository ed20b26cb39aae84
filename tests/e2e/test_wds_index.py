"""Training on the WebDataset shards users already have: `webdataset.ShardWriter`
shards are indexed in place, the counts match what the library yields minus the rejects, our
reader is pinned to the library sample by sample, and pretraining on them resumes bit-exactly
after a worker is killed, reading each sample once per epoch."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from launch.stages.shard import run_shard
from launch.stages.training import run_training_stage
from pipelines.checkpoint.export import consolidated_state_dict
from pipelines.checkpoint.files import latest_checkpoint, open_checkpoint
from pipelines.config import config_from_dict
from pipelines.data.loader.tar_reader import read_shard
from pipelines.data.manifest import read_manifest
from pipelines.data.rejects import read_rejects
from pipelines.storage import locate

from shard_fixtures import make_loader
from train_fixtures import as_config, child_env, keys_by_epoch, tiny_job, train_losses, write_yaml

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")
EXTENSIONS = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP", "JPG": "JPEG"}
NUM_SHARDS, PER_SHARD = 6, 30
TOTAL = 10  # steps of 16 samples on one process: over an epoch boundary


def _image(fmt: str, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (32, 36, 3), dtype=np.uint8)).save(out, format=fmt)
    return out.getvalue()


def _write(pattern: str, samples: list[dict]) -> None:
    with wds.ShardWriter(pattern, maxcount=PER_SHARD, verbose=0) as sink:
        for sample in samples:
            sink.write(sample)


@pytest.fixture(scope="module")
def foreign(tmp_path_factory, ray_local):
    """ImageNet-style shards (jpg/jpeg/png/webp/JPG + cls) with a sample without a label, one
    whose key has a dot (no `jpg` member then), and a truncated last shard; indexed in place."""
    tmp = tmp_path_factory.mktemp("wds")
    samples = []
    for i in range(NUM_SHARDS * PER_SHARD):
        ext = list(EXTENSIONS)[i % 5]
        sample = {"__key__": f"n{i:04d}", "cls": (i // 3) % 5, ext: _image(EXTENSIONS[ext], i)}
        if i == 7:
            del sample["cls"]
        if i == 40:
            sample["__key__"] = "n0040.v2"
        samples.append(sample)
    (tmp / "in").mkdir()
    _write(str(tmp / "in" / "in1k-train-%04d.tar"), samples)
    last = tmp / "in" / f"in1k-train-{NUM_SHARDS - 1:04d}.tar"
    last.write_bytes(last.read_bytes()[: int(last.stat().st_size * 0.6)])
    os.chmod(tmp / "in", 0o555)  # read-only: nothing is written next to the shards
    config = _index_config(tmp, tmp / "in" / "in1k-train-{0000..0005}.tar", val_fraction=0.2)
    summary = run_shard(config, progress=False)
    return tmp, config, summary


def _index_config(tmp: Path, urls, **shard):
    return config_from_dict(
        {
            "shard": {
                "source": {"kind": "webdataset", "urls": str(urls), **shard.pop("source", {})},
                "output": str(tmp / "index"),
                **shard,
            },
            "tracking": {"enabled": False},
        }
    )


def _library_samples(path: Path) -> list[dict]:
    dataset = wds.WebDataset(str(path), handler=wds.ignore_and_continue, shardshuffle=False)
    return list(dataset)


def test_index_counts_equal_the_library_minus_rejects(foreign):
    tmp, _, summary = foreign
    manifest = read_manifest(str(tmp / "index"))
    rejects = read_rejects(locate(str(tmp / "index")))
    assert manifest.format_version == 2 and manifest.classes == ("0", "1", "2", "3", "4")
    cut = "in1k-train-0005.tar"
    assert {(r.key, r.reason) for r in rejects if r.key and r.source_id != cut} == {
        ("n0007", "label_missing"),
        ("n0040", "no_image"),  # webdataset's key is "n0040", its members "v2.cls", "v2.png"
    }
    tails = [r for r in rejects if r.reason == "truncated_shard"]
    assert [r.source_id for r in tails] == [cut]
    # At most the sample the cut went through, kept by the library with what was complete.
    assert len([r for r in rejects if r.key and r.source_id == cut]) <= 1
    assert set(manifest.splits) == {"train", "val"} and len(manifest.splits["val"].shards) == 1
    rejected_per_shard: dict[str, int] = {}
    for r in rejects:
        if r.key:
            rejected_per_shard[r.source_id] = rejected_per_shard.get(r.source_id, 0) + 1
    total = 0
    for split in manifest.splits.values():
        assert split.root == str(tmp / "in")
        for shard in split.shards:
            library = _library_samples(tmp / "in" / shard.name)
            assert shard.samples == len(library) - rejected_per_shard.get(shard.name, 0)
            assert len(shard.skip) == rejected_per_shard.get(shard.name, 0)
            total += len(library)
    assert summary["num_samples"] == total - summary["num_rejected"] < NUM_SHARDS * PER_SHARD


def test_reader_is_pinned_to_the_library_sample_by_sample(foreign):
    tmp, _, _ = foreign
    manifest = read_manifest(str(tmp / "index"))
    for split in manifest.splits.values():
        for shard in split.shards:
            library = _library_samples(tmp / "in" / shard.name)
            expected = [s for i, s in enumerate(library) if i not in set(shard.skip)]
            ours = list(
                read_shard(
                    locate(str(tmp / "in" / shard.name)), range(shard.samples), skip=shard.skip
                )
            )
            assert len(ours) == len(expected) == shard.samples
            for (_, got), want in zip(ours, expected, strict=True):
                assert got.key == want["__key__"]
                fields = {k: v for k, v in want.items() if not k.startswith("__")}
                assert got.fields == fields


def test_rerun_skips_unchanged_shards_and_rereads_touched_ones(foreign):
    tmp, config, _ = foreign
    before = (tmp / "index" / "manifest.json").read_bytes()
    again = run_shard(config, progress=False)
    assert again["num_shards_read"] == 0 and again["num_shards_skipped"] == NUM_SHARDS
    assert (tmp / "index" / "manifest.json").read_bytes() == before
    shard = tmp / "in" / "in1k-train-0001.tar"
    os.utime(shard, ns=(shard.stat().st_atime_ns, shard.stat().st_mtime_ns + 10**9))
    third = run_shard(config, progress=False)
    assert third["num_shards_read"] == 1
    assert (tmp / "index" / "manifest.json").read_bytes() == before


def test_json_labels_by_name_are_indexed_and_read_by_the_loader(tmp_path, ray_local):
    names = ["tabby", "beagle", "ant"]
    samples = [
        {"__key__": f"s{i:03d}", "jpg": _image("JPEG", i), "json": {"label": names[i % 3]}}
        for i in range(40)
    ]
    samples[5]["json"] = {"other": 1}  # no label field
    (tmp_path / "in").mkdir()
    _write(str(tmp_path / "in" / "pets-%02d.tar"), samples)
    config = _index_config(tmp_path, tmp_path / "in", source={"label_key": "json:label"})
    run_shard(config, progress=False)
    manifest = read_manifest(str(tmp_path / "index"))
    assert manifest.classes == ("ant", "beagle", "tabby") and manifest.label_key == "json:label"
    assert manifest.splits["train"].num_samples == 39
    loader = make_loader(tmp_path / "index", train=False, num_workers=0, micro_batch_size=8)
    got = {
        k: int(y)
        for b in loader
        for k, y, ok in zip(b["key"], b["label"], b["valid"], strict=True)
        if ok
    }
    expected = {f"s{i:03d}": sorted(names).index(names[i % 3]) for i in range(40) if i != 5}
    assert got == expected


def _job(tmp: Path, tmp_path: Path) -> dict:
    """One process (`--launcher local`), 16 samples a step, checkpoints at 4 and 8."""
    return tiny_job(
        tmp / "index",
        tmp_path,
        model={"drop_path_rate": 0.1, "num_classes": 5},
        augment={"mixup_alpha": 0.2},
        train={
            "total_steps": TOTAL,
            "global_batch_size": 16,
            "record_sample_keys": True,
        },
        checkpoint={"every_n_steps": 4, "keep_last": 3},
        tracking={"enabled": False},
        cluster={"num_workers": 1},
    )


def test_pretraining_on_indexed_shards_is_killed_and_resumes_bit_exactly(foreign, tmp_path):
    tmp, _, _ = foreign
    raw = _job(tmp, tmp_path)
    reference = tmp_path / "reference"
    run_training_stage(as_config(raw), run_dir=reference, launcher="local", progress=False)

    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "launch.cli", "pretrain", "-c"]
    command += [str(write_yaml(raw, tmp_path / "config.yaml")), "--run-dir", str(killed)]
    job = subprocess.Popen(
        [*command, "--launcher", "local", "--no-progress"],
        env=child_env(),  # the in-process runs set torchrun's variables here
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    marker = killed / "checkpoints" / "step_0000004" / "COMMITTED.json"
    try:
        while not marker.exists() and job.poll() is None:
            time.sleep(0.2)
        assert job.poll() is None, (killed / "summary.json").read_text()
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)  # the trainer and its loader workers
    assert job.wait(timeout=60) == -signal.SIGKILL
    result = run_training_stage(as_config(raw), run_dir=killed, launcher="local", progress=False)
    resumed = open_checkpoint(Path(result["resumed_from"])).step
    assert result["status"] == "finished" and resumed in (4, 8)

    expected, got = train_losses(reference), train_losses(killed)
    assert sorted(got) == sorted(expected) == list(range(1, TOTAL + 1))
    assert all(got[s] == expected[s] for s in range(resumed + 1, TOTAL + 1))
    a = consolidated_state_dict(latest_checkpoint(reference / "checkpoints"))
    b = consolidated_state_dict(latest_checkpoint(killed / "checkpoints"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    train_samples = read_manifest(str(tmp / "index")).splits["train"].num_samples
    unusable = {r.key for r in read_rejects(locate(str(tmp / "index"))) if r.key}
    for run_dir in (reference, killed):
        epochs = keys_by_epoch(run_dir)
        per_epoch = train_samples // 16  # steps
        assert sorted(epochs) == list(range(-(-TOTAL // per_epoch))) != [0]
        for keys in epochs.values():
            assert len(keys) == len(set(keys)), "a sample was read twice in one epoch"
            assert not unusable & set(keys)
        assert len(epochs[0]) == per_epoch * 16
    assert keys_by_epoch(reference) == keys_by_epoch(killed)
