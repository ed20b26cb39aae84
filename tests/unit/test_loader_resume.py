"""Loader state: exact continuation with the same topology, a re-split with a different one."""

from __future__ import annotations

import itertools

import pytest
import torch

from pipelines.errors import DataError

from shard_fixtures import make_loader, write_shard_set

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")
COUNTS = [7, 13, 3, 20, 9]  # 52 samples


@pytest.fixture(scope="module")
def shard_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    write_shard_set(root, {"train": COUNTS})
    return root


def _take(loader, n: int) -> list[dict]:
    """The next n batches, leaving the loader mid-epoch (as a checkpoint would)."""
    return list(itertools.islice(iter(loader), n))


def _keys(batches) -> list[str]:
    return [k for b in batches for k in b["key"]]


def _assert_same(a: list[dict], b: list[dict]) -> None:
    assert [x["key"] for x in a] == [x["key"] for x in b]
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["label"], y["label"])


@pytest.mark.parametrize("rank", [0, 1])
def test_same_topology_resume_is_bit_identical(shard_root, rank):
    kw = dict(rank=rank, world_size=2, num_workers=2, randaugment=True)
    reference = make_loader(shard_root, **kw)
    expected = list(reference) + list(reference)  # epochs 0 and 1
    assert len(expected) == 12
    first = make_loader(shard_root, **kw)
    head = _take(first, 3)  # odd: the next batch comes from worker 1
    state = first.state_dict()
    assert (state["epoch"], state["position"]) == (0, 3)
    resumed = make_loader(shard_root, **kw)
    resumed.load_state_dict(state)
    assert "same topology" in resumed.describe_resume()
    resumed.set_epoch(0)  # the usual per-epoch call keeps the position of the current epoch
    rest = list(resumed) + list(resumed)
    _assert_same(head + rest, expected)


def test_resume_across_the_epoch_boundary(shard_root):
    reference = make_loader(shard_root, world_size=2, num_workers=2)
    epoch0, epoch1 = list(reference), list(reference)
    loader = make_loader(shard_root, world_size=2, num_workers=2)
    _take(loader, 6)  # every batch of epoch 0, without running the iterator to its end
    assert loader.state_dict()["epoch"] == 1 and loader.state_dict()["position"] == 0
    resumed = make_loader(shard_root, world_size=2, num_workers=2)
    resumed.load_state_dict(loader.state_dict())
    _assert_same(list(resumed), epoch1)
    # Mid-way through epoch 1.
    loader = make_loader(shard_root, world_size=2, num_workers=2)
    list(loader)
    _take(loader, 2)
    state = loader.state_dict()
    assert (state["epoch"], state["position"]) == (1, 2)
    resumed = make_loader(shard_root, world_size=2, num_workers=2)
    resumed.load_state_dict(state)
    _assert_same(list(resumed), epoch1[2:])
    assert epoch0[0]["key"] != epoch1[0]["key"]


def _consume(root, world: int, workers: int, batches: int, state=None, **kw):
    """Every rank of a topology takes `batches` batches; returns (keys read, state)."""
    keys, states = [], []
    for rank in range(world):
        loader = make_loader(root, rank=rank, world_size=world, num_workers=workers, **kw)
        if state is not None:
            loader.load_state_dict(state)
        keys += _keys(_take(loader, batches))
        states.append(loader.state_dict())
    assert all(s == states[0] for s in states)  # the state is the same on every rank
    return keys, states[0], loader


def _finish(root, world: int, workers: int, state, **kw):
    keys, counts, notes = [], [], []
    for rank in range(world):
        loader = make_loader(root, rank=rank, world_size=world, num_workers=workers, **kw)
        loader.load_state_dict(state)
        notes.append(loader.describe_resume())
        expected = loader.epoch_batches
        batches = list(loader)
        assert len(batches) == expected
        counts.append(len(batches))
        keys += _keys(batches)
    assert len(set(counts)) == 1
    return keys, counts[0], notes[0], loader


def test_fewer_ranks_continue_the_epoch_without_repeats(shard_root):
    seen, state, _ = _consume(shard_root, world=2, workers=2, batches=3)
    assert len(seen) == 24 and state["position"] == 3
    rest, count, note, loader = _finish(shard_root, world=1, workers=2, state=state)
    assert "topology changed" in note and "28" in note and "continues" in note
    # 28 samples left, 2 consumers: 14 -> 12 each (multiple of 4): 6 batches, 4 dropped.
    assert count == 6 and len(rest) == 24
    assert not set(seen) & set(rest) and len(set(rest)) == len(rest)
    # The next epoch starts whole with the new topology.
    assert loader.epoch == 1
    nxt = list(loader)
    assert len(nxt) == loader.batches_per_epoch == 12
    assert len(set(_keys(nxt))) == 48


def test_more_ranks_continue_the_epoch_without_repeats(shard_root):
    seen, state, _ = _consume(shard_root, world=1, workers=0, batches=5)
    assert len(seen) == 20
    rest, count, note, _ = _finish(shard_root, world=2, workers=2, state=state)
    # 32 left over 4 consumers: 8 each = 2 batches per worker, 4 per rank, nothing dropped.
    assert count == 4 and len(rest) == 32 and "0 dropped" in note
    assert sorted(seen + rest) == sorted(set(seen + rest))


def test_chained_topology_changes_and_exact_resume_after_a_resplit(shard_root):
    seen1, state1, _ = _consume(shard_root, world=2, workers=2, batches=2)  # 16
    seen2, state2, _ = _consume(shard_root, world=1, workers=1, batches=2, state=state1)  # 8
    assert len(state2["history"]) == 1 and state2["position"] == 2
    # Same (new) topology again: exact continuation of the re-split.
    ref = make_loader(shard_root, world_size=1, num_workers=1)
    ref.load_state_dict(state1)
    expected = list(ref)
    resumed = make_loader(shard_root, world_size=1, num_workers=1)
    resumed.load_state_dict(state2)
    _assert_same(list(resumed), expected[2:])
    # And a third topology: still nothing read twice within the epoch.
    rest, _, _, _ = _finish(shard_root, world=2, workers=0, state=state2)
    everything = seen1 + seen2 + rest
    assert len(everything) == len(set(everything))


def test_state_of_another_shard_set_or_seed_is_refused(shard_root, tmp_path):
    loader = make_loader(shard_root)
    state = loader.state_dict()
    write_shard_set(tmp_path, {"train": [7, 13, 3, 20, 10]})
    with pytest.raises(DataError, match="fingerprint"):
        make_loader(tmp_path).load_state_dict(state)
    with pytest.raises(DataError, match="seed"):
        make_loader(shard_root, seed=1).load_state_dict(state)
    with pytest.raises(DataError, match="malformed"):
        make_loader(shard_root).load_state_dict({"epoch": 1})


def test_repeated_aug_augments_each_copy_and_resumes_exactly(shard_root):
    """data.repeated_aug=3: same batches per epoch, each chosen image three times in a row with
    three different augmentations, no image in two repeat groups, and an exact resume."""
    kw = dict(world_size=2, num_workers=2, repeated_aug=3)
    epoch = []
    for rank in range(2):
        epoch += list(make_loader(shard_root, rank=rank, **kw))
    assert len(epoch) == 2 * make_loader(shard_root, world_size=2).batches_per_epoch
    copies: dict[str, list[torch.Tensor]] = {}
    for batch in epoch:
        for key, image in zip(batch["key"], batch["image"], strict=True):
            copies.setdefault(key, []).append(image)
    assert max(len(c) for c in copies.values()) == 3
    assert sum(len(c) == 3 for c in copies.values()) >= len(copies) - 4  # 4 consumers' tails
    for images in copies.values():
        assert all(not torch.equal(images[0], other) for other in images[1:])
    # Exact resume mid-epoch, between the copies of a group (batch size 4, 3 copies).
    reference = list(make_loader(shard_root, **kw))
    first = make_loader(shard_root, **kw)
    head = _take(first, 1)
    resumed = make_loader(shard_root, **kw)
    resumed.load_state_dict(first.state_dict())
    assert "repeated_aug=3" in resumed.describe_resume()
    _assert_same(head + list(resumed), reference)
