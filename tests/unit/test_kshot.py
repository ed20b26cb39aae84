"""k-shot shard sets (`shard.train_per_class`): k training images per class chosen by a seed,
the val split untouched. Written in-process (`shard_set` + `write_shard`, the functions the Ray
tasks run), read back with the real `ShardLoader`."""

from __future__ import annotations

import tarfile
from collections import Counter
from pathlib import Path

import pytest

from pipelines.config import config_from_dict
from pipelines.config.data import AugmentSection, DataSection
from pipelines.config.pipeline import load_pipeline, pipeline_from_dict, pipeline_transfer_runs
from pipelines.data import shard_set
from pipelines.data.loader.shard_loader import ShardLoader
from pipelines.data.manifest import read_manifest
from pipelines.data.shard_writer import write_shard
from pipelines.data.sources.base import SampleRef
from pipelines.data.subset import select_per_class
from pipelines.errors import ConfigError, DataError


def _write(output: Path, **shard) -> dict:
    """Shard the digits into `output` (no Ray) and return the manifest as JSON."""
    section = config_from_dict(
        {
            "shard": {
                "source": {"kind": "digits", "image_size": 16},
                "output": str(output),
                "samples_per_shard": 100,
                "image_format": "png",
                "val_fraction": 0.2,
                **shard,
            }
        }
    ).shard
    job, plan = shard_set.prepare(section)
    shard_set.begin(job.output, plan)
    results = [write_shard(job, task) for task in plan.shards]
    manifest, _ = shard_set.finish(job, plan, results, section)
    return manifest.to_json()


def _labels_and_keys(root: Path, split: str) -> list[tuple[str, int]]:
    out = []
    for shard in read_manifest(str(root)).split(split).shards:
        with tarfile.open(root / shard.name) as tar:
            for member in tar.getmembers():
                key, _, ext = member.name.partition(".")
                if ext == "cls":
                    out.append((key, int(tar.extractfile(member).read())))
    return out


@pytest.fixture(scope="module")
def full(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("digits_full")
    _write(root)
    return root


def test_subset_is_k_per_class_deterministic_and_nested():
    refs = [SampleRef(f"s{i:03d}", i % 3, f"s{i}") for i in range(60)]
    five = select_per_class(refs, 5, seed=0)
    assert Counter(r.label for r in five) == {0: 5, 1: 5, 2: 5}
    assert five == select_per_class(list(refs), 5, seed=0)  # same seed, same subset
    assert [r.key for r in five] == sorted(r.key for r in five)  # keeps the order given
    assert {r.key for r in five} != {r.key for r in select_per_class(refs, 5, seed=1)}
    assert {r.key for r in five} <= {r.key for r in select_per_class(refs, 12, seed=0)}
    with pytest.raises(DataError, match="train_per_class=21: .*class 0: 20"):
        select_per_class(refs, 21, seed=0)


def test_kshot_shards_have_k_per_class_and_the_same_val(full, tmp_path):
    manifest = _write(tmp_path / "k5s1", train_per_class=5, train_subset_seed=1)
    train = _labels_and_keys(tmp_path / "k5s1", "train")
    assert Counter(label for _, label in train) == {label: 5 for label in range(10)}
    full_train = dict(_labels_and_keys(full, "train"))
    assert all(full_train[key] == label for key, label in train)  # drawn from the train split
    # val: the same shards, byte for byte, as the full set's
    full_val = read_manifest(str(full)).split("val").shards
    assert [
        (s.name, s.sha256) for s in read_manifest(str(tmp_path / "k5s1")).split("val").shards
    ] == [(s.name, s.sha256) for s in full_val]
    assert manifest["settings"]["train_per_class"] == 5
    assert manifest["settings"]["train_subset_seed"] == 1
    assert "train_per_class" not in read_manifest(str(full)).to_json()["settings"]

    again = _write(tmp_path / "k5s1_again", train_per_class=5, train_subset_seed=1)
    assert again["splits"] == manifest["splits"]  # same seed: the same bytes
    other = _write(tmp_path / "k5s2", train_per_class=5, train_subset_seed=2)
    assert other["splits"]["train"] != manifest["splits"]["train"]
    assert other["splits"]["val"] == manifest["splits"]["val"]


def test_kshot_set_trains_through_the_loader(tmp_path):
    _write(tmp_path / "k5", train_per_class=5)
    loader = ShardLoader(
        str(tmp_path / "k5"), "train", rank=0, world_size=1, micro_batch_size=8, seed=0,
        data=DataSection(num_workers=0, shuffle_buffer=16), augment=AugmentSection(hflip=0.0),
        img_size=16,
    )  # fmt: skip
    batches = list(loader)
    assert len(batches) == 50 // 8
    assert all(b["image"].shape == (8, 3, 16, 16) for b in batches)


def test_bad_k_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="shard.train_per_class"):
        config_from_dict({"shard": {"source": {"kind": "digits"}, "train_per_class": 0}})
    with pytest.raises(DataError, match="train_per_class=500"):
        _write(tmp_path / "too_many", train_per_class=500)


def test_transfer_section_gives_one_validated_config_per_point(tmp_path):
    pipeline, _ = load_pipeline("configs/demo.yaml")
    runs = pipeline_transfer_runs(pipeline, tmp_path)
    names = [r.name for r in runs]
    assert names[:2] == ["k5_s0_pretrained", "k5_s0_scratch"] and len(names) == len(set(names))
    k5 = [r for r in runs if r.shots == 5]
    assert sorted({r.seed for r in k5}) == [0, 1, 2]
    for run in runs:
        config = run.config
        assert config.train.seed == run.seed and config.run_dir == str(tmp_path / run.name)
        assert config.shard.output == str(tmp_path / "shards" / run.shard_key)
        if run.shots != "all":
            assert config.shard.train_per_class == run.shots
            assert config.shard.train_subset_seed == run.seed
    # both inits of a (k, seed) read one shard set
    assert len({r.config.shard.output for r in runs}) == len(runs) // 2

    raw = {
        "pretrain": {},
        "finetune": {"shard": {"source": {"kind": "digits"}}},
        "transfer": {"points": [{"shots": 5, "finetune": {"train": {"total_steps": 0}}}]},
    }
    with pytest.raises(ConfigError, match=r"transfer.points\[0\].train.total_steps"):
        pipeline_from_dict(raw)
