"""Corrupt input never stops an epoch: bad samples are skipped, counted, refilled or masked."""

from __future__ import annotations

import itertools
import logging
import tarfile

import pytest
import torch

from pipelines.data.loader.read_plan import shard_order
from pipelines.errors import DataError

from shard_fixtures import keys_of, make_loader, sample_key, truncate_shard, write_shard_set

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")
COUNTS = [7, 13, 3, 20, 9]
GARBAGE = sample_key("train", 1, 4)
NO_CLS = sample_key("train", 4, 2)


def _used_keys(seed: int = 0, epoch: int = 0, used: int = 48) -> list[str]:
    """Keys of the first `used` positions of the epoch stream (the rest is the dropped tail)."""
    order = shard_order(len(COUNTS), seed, epoch)
    return [sample_key("train", s, i) for s in order for i in range(COUNTS[s])][:used]


def _broken_by_cut(path, cut: int) -> set[str]:
    """Keys whose image member does not end before byte `cut` of the (untruncated) tar."""
    with tarfile.open(path) as tar:
        return {
            m.name.split(".")[0]
            for m in tar.getmembers()
            if m.name.endswith(".png") and m.offset_data + m.size > cut
        }


@pytest.fixture
def broken_root(tmp_path):
    write_shard_set(
        tmp_path, {"train": COUNTS, "val": [5, 6]}, bad_image={GARBAGE}, no_cls={NO_CLS}
    )
    shard = tmp_path / "train-000003.tar"
    cut = shard.stat().st_size // 2
    lost = _broken_by_cut(shard, cut)
    truncate_shard(tmp_path, shard.name, 0.5)
    assert 5 <= len(lost) <= 15
    return tmp_path, lost | {GARBAGE, NO_CLS}


def test_truncated_tar_garbage_bytes_and_missing_cls_are_skipped_and_refilled(broken_root):
    root, bad = broken_root
    # verify_shards=never: a shard truncated after its manifest was written is exactly what
    # verification refuses; these tests exercise the reader's no-throw path behind it.
    loader = make_loader(root, num_workers=2, max_skip_fraction=0.9, verify_shards="never")
    batches = list(loader)
    assert len(batches) == loader.batches_per_epoch == 12
    assert all(len(b["key"]) == 4 and b["valid"].all() for b in batches)
    expected_bad = bad & set(_used_keys())
    stats = loader.stats()
    assert stats["samples_skipped"] == stats["samples_refilled"] == len(expected_bad)
    assert stats["samples"] == 48 - len(expected_bad)
    keys = [k for b in batches for k in b["key"]]
    assert not bad & set(keys)
    assert set(keys) | expected_bad == set(_used_keys())


def test_refill_is_deterministic_across_a_resume(broken_root):
    root, _ = broken_root
    kw = dict(world_size=1, num_workers=2, max_skip_fraction=0.9, verify_shards="never")
    reference = list(make_loader(root, **kw))
    first = make_loader(root, **kw)
    head = list(itertools.islice(iter(first), 5))
    resumed = make_loader(root, **kw)
    resumed.load_state_dict(first.state_dict())
    rest = list(resumed)
    assert [b["key"] for b in head + rest] == [b["key"] for b in reference]
    for a, b in zip(head + rest, reference, strict=True):
        assert torch.equal(a["image"], b["image"])


def test_exceeding_the_skip_budget_raises(broken_root):
    root, _ = broken_root
    loader = make_loader(
        root, world_size=1, num_workers=2, max_skip_fraction=0.05, verify_shards="never"
    )
    with pytest.raises(DataError, match=r"skipped \d+ of its 24 samples.*max_skip_fraction=0.05"):
        list(loader)


def test_missing_shard_file_is_skipped_and_counted(tmp_path, caplog):
    write_shard_set(tmp_path, {"train": COUNTS})
    (tmp_path / "train-000004.tar").unlink()  # 9 samples
    loader = make_loader(tmp_path, num_workers=0, max_skip_fraction=0.5)
    # One consumer: 52 samples, a multiple of 4, so nothing is dropped and all 9 are planned.
    lost = {sample_key("train", 4, i) for i in range(9)}
    with caplog.at_level(logging.WARNING, logger="pipelines.data.loader.dataset"):
        batches = list(loader)
    assert loader.stats()["samples_skipped"] == len(lost) >= 5
    assert len(batches) == 13
    # Rate-limited: the 1st, 2nd, 4th, 8th skip are logged, not every one.
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == len(lost).bit_length()
    assert "train-000004.tar" in messages[0] and "FileNotFoundError" in messages[0]


def test_eval_masks_bad_samples_and_counts_the_rest_once(tmp_path):
    bad = sample_key("val", 1, 3)
    write_shard_set(tmp_path, {"train": [8], "val": [5, 6]}, bad_image={bad})
    loaders = [
        make_loader(
            tmp_path,
            rank=r,
            world_size=2,
            split="val",
            train=False,
            micro_batch_size=2,
            max_skip_fraction=0.5,
        )
        for r in range(2)
    ]
    per_rank = [list(lo) for lo in loaders]
    assert len(per_rank[0]) == len(per_rank[1])
    valid = [
        k for bs in per_rank for b in bs for k, ok in zip(b["key"], b["valid"], strict=True) if ok
    ]
    assert sorted(valid) == sorted(set(keys_of("val", [5, 6])) - {bad})
    assert sum(lo.stats()["samples_skipped"] for lo in loaders) == 1


@pytest.mark.parametrize(
    "fmt,kw", [("PNG", {}), ("JPEG", {}), ("JPEG", {"progressive": True}), ("WEBP", {})]
)
def test_header_size_and_pixel_guard(fmt, kw):
    import io

    from PIL import Image

    from pipelines.data.loader.tar_reader import RawSample
    from pipelines.data.loader.transforms import BadSample, decode_sample, image_size

    buf = io.BytesIO()
    Image.new("RGB", (37, 21), (10, 200, 30)).save(buf, format=fmt, **kw)
    data = buf.getvalue()
    assert image_size(data) == (37, 21)
    ext = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}[fmt]
    raw = RawSample("k", {"cls": b"1", ext: data})
    image, label = decode_sample(raw, num_classes=2, max_pixels=37 * 21)
    assert image.shape == (3, 21, 37) and image.dtype == torch.uint8 and label == 1
    with pytest.raises(BadSample, match="max_pixels"):
        decode_sample(raw, num_classes=2, max_pixels=37 * 21 - 1)
    with pytest.raises(BadSample, match="outside"):
        decode_sample(raw, num_classes=1, max_pixels=10**6)
