"""Tampered shards never train: each shard's sha256 is checked against the
manifest before its samples are used; `data.verify_shards` says in which epochs."""

from __future__ import annotations

import pytest

from pipelines.errors import DataError

from shard_fixtures import make_loader, relabel_to_zero, write_shard_set

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")
COUNTS = [8, 8, 8]


@pytest.fixture
def root(tmp_path):
    write_shard_set(tmp_path, {"train": COUNTS, "val": [4]}, num_classes=5)
    return tmp_path


def test_a_relabelled_shard_is_refused_by_name(root):
    relabel_to_zero(root / "train-000001.tar")
    with pytest.raises(DataError, match=r"train-000001\.tar: content does not match the manifest"):
        list(make_loader(root, num_workers=2, micro_batch_size=4))
    eval_loader = make_loader(root, split="train", train=False, num_workers=0)
    with pytest.raises(DataError, match="train-000001.tar"):
        list(eval_loader)
    # Opting out trains on the files as they are.
    loader = make_loader(root, num_workers=0, micro_batch_size=4, verify_shards="never")
    labels = [int(x) for b in loader for x in b["label"]]
    assert len(labels) == sum(COUNTS)


def test_first_epoch_verifies_once_always_every_epoch(root):
    first = make_loader(root, num_workers=0, micro_batch_size=4)
    always = make_loader(root, num_workers=0, micro_batch_size=4, verify_shards="always")
    assert len(list(first)) == len(list(always)) == 6  # epoch 0: intact, both verify
    relabel_to_zero(root / "train-000002.tar")
    assert len(list(first)) == 6  # epoch 1: first_epoch no longer hashes
    with pytest.raises(DataError, match="train-000002.tar"):
        list(always)
    # A resumed run (a new loader) verifies again in its first epoch.
    resumed = make_loader(root, num_workers=0, micro_batch_size=4)
    resumed.load_state_dict(first.state_dict())
    with pytest.raises(DataError, match="train-000002.tar"):
        list(resumed)
