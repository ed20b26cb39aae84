"""ShardLoader end to end on real tar shards: split over ranks and workers, order, eval, names."""

from __future__ import annotations

import json

import pytest
import torch

from pipelines.data.loader.read_plan import shard_order
from pipelines.data.manifest import Manifest, ShardInfo, SplitInfo
from pipelines.errors import DataError

from shard_fixtures import keys_of, make_loader, sample_key, sample_label, write_shard_set

# torchvision 0.29 deprecates its image decoders (the loader silences this outside pytest).
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")
COUNTS = [7, 13, 3, 20, 9]  # 52 samples, uneven shards


@pytest.fixture(scope="module")
def shard_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    write_shard_set(root, {"train": COUNTS, "val": [5, 6, 2]})
    return root


def _epoch(loader):
    return [batch for batch in loader]


def _stream_keys(seed: int, epoch: int) -> list[str]:
    """Keys in the documented global order of an epoch: shards shuffled from (seed, epoch)."""
    order = shard_order(len(COUNTS), seed, epoch)
    return [sample_key("train", s, i) for s in order for i in range(COUNTS[s])]


def test_two_ranks_two_workers_read_each_sample_at_most_once(shard_root):
    loaders = [make_loader(shard_root, rank=r, world_size=2) for r in range(2)]
    per_rank = [_epoch(loader) for loader in loaders]
    # C = 4 consumers, n = 52 // 4 = 13 -> 12 (a multiple of 4): 3 batches per worker.
    assert [len(b) for b in per_rank] == [6, 6] == [lo.batches_per_epoch for lo in loaders]
    keys = [k for batches in per_rank for b in batches for k in b["key"]]
    assert len(keys) == len(set(keys)) == 48
    stream = _stream_keys(seed=0, epoch=0)
    assert set(keys) == set(stream[:48])  # the documented remainder: the stream's last 4
    for batches in per_rank:
        for b in batches:
            assert b["image"].shape == (4, 3, 16, 16) and b["image"].dtype == torch.float32
            assert b["label"].dtype == torch.int64 and b["valid"].all()
            expected = [sample_label(int(k[5:8]), int(k[9:]), 5) for k in b["key"]]
            assert b["label"].tolist() == expected
    assert loaders[0].stats()["samples"] == 24 and loaders[0].epoch == 1


def test_order_is_reproducible_and_changes_with_epoch(shard_root):
    first = _epoch(make_loader(shard_root, rank=1, world_size=2))
    again = _epoch(make_loader(shard_root, rank=1, world_size=2))
    assert [b["key"] for b in first] == [b["key"] for b in again]
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(first, again, strict=True))
    loader = make_loader(shard_root, rank=1, world_size=2)
    loader.set_epoch(1)
    other = _epoch(loader)
    assert [b["key"] for b in other] != [b["key"] for b in first]
    reseeded = _epoch(make_loader(shard_root, rank=1, world_size=2, seed=5))
    assert [b["key"] for b in reseeded] != [b["key"] for b in first]


def test_num_workers_zero_is_one_consumer_per_rank(shard_root):
    loaders = [make_loader(shard_root, rank=r, world_size=2, num_workers=0) for r in range(2)]
    keys = [k for lo in loaders for b in _epoch(lo) for k in b["key"]]
    assert loaders[0].batches_per_epoch == 6  # 52 // 2 = 26 -> 24 = 6 batches of 4
    assert len(keys) == len(set(keys)) == 48


def test_iterating_again_continues_with_the_next_epoch(shard_root):
    loader = make_loader(shard_root, num_workers=0, micro_batch_size=8)
    first = [b["key"] for b in loader]
    assert loader.epoch == 1 and loader.state_dict()["position"] == 0
    second = [b["key"] for b in loader]
    assert len(first) == len(second) == 6 and first != second


@pytest.mark.parametrize("world,workers,batch", [(2, 2, 2), (3, 2, 2), (3, 0, 3), (2, 1, 8)])
def test_eval_counts_every_sample_once_with_equal_batches(shard_root, world, workers, batch):
    loaders = [
        make_loader(
            shard_root,
            rank=r,
            world_size=world,
            num_workers=workers,
            micro_batch_size=batch,
            split="val",
            train=False,
        )
        for r in range(world)
    ]
    per_rank = [_epoch(lo) for lo in loaders]
    assert len({len(b) for b in per_rank}) == 1
    assert len(per_rank[0]) == loaders[0].batches_per_epoch
    valid_keys, padded = [], 0
    for batches in per_rank:
        for b in batches:
            mask = b["valid"].tolist()
            assert len(mask) == batch == len(b["key"])
            valid_keys += [k for k, ok in zip(b["key"], mask, strict=True) if ok]
            padded += mask.count(False)
            assert all(k == "" for k, ok in zip(b["key"], mask, strict=True) if not ok)
    assert sorted(valid_keys) == sorted(keys_of("val", [5, 6, 2]))
    assert padded == sum(len(b) for b in per_rank) * batch - 13
    assert sum(lo.stats()["samples_padded"] for lo in loaders) == padded


def test_eval_is_deterministic_centre_crop(shard_root):
    a = _epoch(make_loader(shard_root, split="val", train=False, micro_batch_size=13))
    b = _epoch(
        make_loader(shard_root, split="val", train=False, micro_batch_size=13, num_workers=0)
    )
    assert len(a) == 2 and len(b) == 1  # 2 workers: ranges of 7 and 6, one batch each
    images_a = torch.cat([x["image"][x["valid"]] for x in a])
    assert torch.equal(images_a, b[0]["image"])


def test_impossible_plan_is_a_clear_error(shard_root):
    with pytest.raises(DataError, match=r"52 samples.*at least 64"):
        make_loader(shard_root, world_size=4, num_workers=2, micro_batch_size=8)


@pytest.mark.parametrize(
    "name", ["pipe:rm -rf /", "../x.tar", "/etc/x.tar", "s3://b/x.tar", "a/../../x.tar"]
)
def test_malicious_shard_names_are_refused(tmp_path, name):
    write_shard_set(tmp_path, {"train": [8]})
    manifest_path = tmp_path / "manifest.json"
    data = json.loads(manifest_path.read_text())
    data["splits"]["train"]["shards"][0]["name"] = name
    manifest_path.write_text(json.dumps(data))
    with pytest.raises(DataError, match="not allowed"):
        make_loader(tmp_path)
    # A manifest built in code (never parsed) is checked too.
    bad = Manifest(("a",), {"train": SplitInfo((ShardInfo(name, 8, 0, ""),))})
    from pipelines.config.data import AugmentSection, DataSection
    from pipelines.data.loader.shard_loader import ShardLoader

    with pytest.raises(DataError, match="not allowed"):
        ShardLoader(
            str(tmp_path),
            "train",
            rank=0,
            world_size=1,
            micro_batch_size=1,
            seed=0,
            data=DataSection(),
            augment=AugmentSection(),
            img_size=16,
            manifest=bad,
        )


def test_unknown_split_and_scheme_are_data_errors(shard_root):
    with pytest.raises(DataError, match="split 'test'"):
        make_loader(shard_root, split="test")
    with pytest.raises(DataError, match="scheme 'pipe'"):
        make_loader("pipe:cat /etc/passwd")
