"""Unbounded allocations and malformed manifests: a tar member over the cap is
never read whole, counts are checked against the bytes before anything is sized from them,
duplicate shard names and malformed splits are one-line `DataError`s."""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from pipelines.data.loader.tar_reader import Missing, RawSample, read_shard
from pipelines.errors import DataError
from pipelines.storage import locate

from shard_fixtures import make_loader, write_shard_set

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")


def _edit_manifest(root, edit) -> None:
    path = root / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _one_line_error(root, match: str) -> str:
    with pytest.raises(DataError, match=match) as err:
        make_loader(root, num_workers=0)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_a_member_over_the_cap_ends_the_shard_unread(tmp_path):
    path = tmp_path / "big.tar"
    with tarfile.open(path, "w") as tar:
        for key, size in (("a", 10), ("b", 5000), ("c", 10)):
            for ext, data in (("cls", b"1"), ("png", b"x" * size)):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    items = list(read_shard(locate(str(path)), [0, 1, 2], max_member_bytes=1000))
    assert isinstance(items[0][1], RawSample) and items[0][1].fields["png"] == b"x" * 10
    # The interrupted sample keeps only the members read before the cut: no image, a bad sample.
    assert isinstance(items[1][1], RawSample) and "png" not in items[1][1].fields
    assert isinstance(items[2][1], Missing) and "max_member_bytes=1000" in items[2][1].reason


def test_loader_skips_samples_behind_an_oversized_member(tmp_path):
    write_shard_set(tmp_path, {"train": [8]})
    loader = make_loader(tmp_path, num_workers=0, micro_batch_size=4, max_skip_fraction=1.0)
    list(loader)
    assert loader.stats()["samples_skipped"] == 0
    from pipelines.config import config_from_dict
    from pipelines.data.loader.shard_loader import ShardLoader
    from pipelines.distributed import DistContext

    config = config_from_dict(
        {
            "data": {
                "train_shards": str(tmp_path),
                "num_workers": 0,
                "max_skip_fraction": 1.0,
                "max_member_bytes": 100,  # every PNG is larger
            },
            "train": {"micro_batch_size": 4, "global_batch_size": 8},
        }
    )
    capped = ShardLoader.from_config(config, DistContext(), "train", train=False, img_size=16)
    batches = list(capped)
    assert not any(b["valid"].any() for b in batches)
    assert capped.stats()["samples_skipped"] == 8


def test_absurd_counts_are_one_line_errors_before_any_allocation(tmp_path):
    write_shard_set(tmp_path, {"train": [8, 8]})

    def claim(samples, num_bytes=None):
        def edit(data):
            split = data["splits"]["train"]
            split["shards"][0]["samples"] = samples
            if num_bytes is not None:
                split["shards"][0]["bytes"] = num_bytes
            split.pop("num_samples", None), split.pop("num_bytes", None)

        return edit

    _edit_manifest(tmp_path, claim(10**13))
    _one_line_error(tmp_path, r"claims 10000000000000 samples in \d+ bytes")
    # Bytes inflated to match: the file on disk is what counts.
    _edit_manifest(tmp_path, claim(10**13, 10**13 * 512))
    _one_line_error(tmp_path, r"claims 10000000000000 samples, but the file's \d+ bytes")


def test_duplicate_shard_names_are_an_error(tmp_path):
    write_shard_set(tmp_path, {"train": [8, 8], "val": [4]})

    def repeat(data):
        shards = data["splits"]["train"]["shards"]
        data["splits"]["val"]["shards"].append(shards[0])
        data["splits"]["val"].pop("num_samples", None), data["splits"]["val"].pop("num_bytes", None)

    _edit_manifest(tmp_path, repeat)
    _one_line_error(tmp_path, "'train-000000.tar' is listed twice")


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda d: d.update(splits=["train"]), "splits: Input should be a valid dictionary"),
        (lambda d: d["splits"].update(train="x"), "splits.train: Input should be"),
        (lambda d: d["splits"]["train"].pop("shards"), "splits.train.shards: Field required"),
        (
            lambda d: d["splits"]["train"]["shards"][0].update(samples="8"),
            "splits.train.shards.0.samples: Input should be a valid integer",
        ),
        (
            lambda d: d["splits"]["train"]["shards"][0].update(sha256="x"),
            "splits.train.shards.0.sha256: String should match",
        ),
        (
            lambda d: d["splits"]["train"]["shards"][0].update(url="pipe:x"),
            "splits.train.shards.0.url: Extra inputs are not permitted",
        ),
        (lambda d: d.update(classes={"a": 1}), "classes: Input should be a valid list"),
        (lambda d: d.update(format_version="1"), "format_version '1' is not supported"),
    ],
)
def test_malformed_manifests_are_one_line_errors(tmp_path, edit, match):
    write_shard_set(tmp_path, {"train": [8]})
    _edit_manifest(tmp_path, edit)
    _one_line_error(tmp_path, match)
