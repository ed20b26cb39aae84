"""Indexing users' shards takes what they hold at face value only where it is safe: a `.cls` is
ASCII digits, the class count has a bound, a member name that is not UTF-8 is a row in
rejected.parquet (escaped) rather than the end of the stage, and shards missing from a brace
pattern are found in one listing of their folder, not one request (or task) per name.

These run the index's own steps (`plan_index`, `index_shard`, `finish_index`) in this process;
the Ray stage schedules the same calls."""

from __future__ import annotations

import io
import tarfile

import pytest

from pipelines.config import config_from_dict
from pipelines.data import wds_index
from pipelines.data.rejects import read_rejects
from pipelines.errors import DataError
from pipelines.storage import locate

MAX_MEMBER_BYTES = 1 << 20
BAD_NAME = b"caf\xe9-\xff"  # Latin-1, not UTF-8: tarfile hands it on as surrogates


def tar_bytes(samples: list[tuple[str | bytes, dict[str, bytes]]]) -> bytes:
    """A GNU tar with one member per (key, {extension: bytes}); a bytes key is written raw."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for key, members in samples:
            if isinstance(key, bytes):
                key = key.decode("utf-8", "surrogateescape")
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def labelled(*labels: bytes) -> bytes:
    return tar_bytes(
        [(f"s{i:03d}", {"jpg": b"not decoded", "cls": c}) for i, c in enumerate(labels)]
    )


def index(output: str, urls: str, **source):
    """(manifest, rejected rows, plan) of indexing `urls` into `output`."""
    section = config_from_dict(
        {
            "shard": {
                "source": {"kind": "webdataset", "urls": urls, **source},
                "output": output,
                "val_fraction": 0.0,
            }
        }
    ).shard
    plan = wds_index.plan_index(section, MAX_MEMBER_BYTES)
    results = [wds_index.index_shard(plan.job, task) for task in plan.tasks]
    manifest, rejected = wds_index.finish_index(plan, results)
    return manifest, rejected, plan


def test_a_cls_label_is_ascii_digits_only(tmp_path):
    (tmp_path / "in").mkdir()
    shard = labelled(b"7", b" 4\n", b"1_0", b"+3", b"-2", b"\xd9\xa3", b"0x5", b"")
    (tmp_path / "in" / "a.tar").write_bytes(shard)
    manifest, rejected, _ = index(str(tmp_path / "out"), str(tmp_path / "in" / "a.tar"))
    assert manifest.num_classes == 8  # from "7": "1_0" is not 10, and nothing else is a label
    assert manifest.splits["train"].num_samples == 2
    reasons = {r.key: r.reason for r in rejected}
    assert reasons == {f"s{i:03d}": "label_invalid" for i in range(2, 8)}


def test_the_class_count_is_bounded_with_one_line(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.tar").write_bytes(labelled(b"1", b"3000000", b"2"))
    url = str(tmp_path / "in" / "a.tar")
    with pytest.raises(DataError) as info:
        index(str(tmp_path / "out"), url)  # the default bound: 1,000,000 classes
    message = str(info.value)
    assert "\n" not in message and "a.tar" in message and "3000000" in message
    assert "shard.source.max_classes=1000000" in message
    assert not (tmp_path / "out" / "manifest.json").exists()
    # The bound is the user's to raise; at it, a label is refused the same way.
    (tmp_path / "in" / "a.tar").write_bytes(labelled(b"1", b"4", b"2"))
    with pytest.raises(DataError, match="max_classes=4"):
        index(str(tmp_path / "out"), url, max_classes=4)
    manifest, _, _ = index(str(tmp_path / "out"), url, max_classes=5)
    assert manifest.num_classes == 5
    # Class names count against it too.
    names = tmp_path / "classes.txt"
    names.write_text("a\nb\nc\n")
    with pytest.raises(DataError, match="max_classes=2"):
        index(str(tmp_path / "out"), url, max_classes=2, classes_file=str(names))


def test_a_member_name_that_is_not_utf8_is_an_escaped_reject_row(tmp_path):
    (tmp_path / "in").mkdir()
    shard = tar_bytes(
        [
            ("good", {"jpg": b"x", "cls": b"1"}),
            (BAD_NAME, {"cls": b"1"}),  # no image: rejected, under its raw name
            (BAD_NAME + b"2", {"jpg": b"x", "cls": b"0"}),  # usable: indexed like any other
        ]
    )
    (tmp_path / "in" / "a.tar").write_bytes(shard)
    manifest, rejected, _ = index(str(tmp_path / "out"), str(tmp_path / "in" / "a.tar"))
    assert manifest.splits["train"].num_samples == 2
    (row,) = read_rejects(locate(str(tmp_path / "out")))
    assert row.reason == "no_image" and row.key == "caf\\xe9-\\xff"
    assert [r.reason for r in rejected] == ["no_image"]


def test_missing_shards_of_a_brace_pattern_come_from_one_listing(s3_server, s3_store, tmp_path):
    root = locate(f"{s3_store}/missing-shards/in")
    present = ["part-0003.tar", "part-0500.tar", "part-1999.tar"]
    for name in present:
        root.join(name).write_bytes_atomic(labelled(b"0", b"1"))
    section = config_from_dict(
        {
            "shard": {
                "source": {"kind": "webdataset", "urls": f"{root.uri}/part-{{0000..1999}}.tar"},
                "output": str(tmp_path / "out"),
                "val_fraction": 0.0,
            }
        }
    ).shard
    mark = s3_server.mark()
    plan = wds_index.plan_index(section, MAX_MEMBER_BYTES)
    planning = s3_server.requests_since(mark)
    assert len(planning) <= 2, planning  # one listing (and at most one page more)
    assert sorted(task.name for task in plan.tasks) == present  # no task per missing name
    results = [wds_index.index_shard(plan.job, task) for task in plan.tasks]
    manifest, rejected = wds_index.finish_index(plan, results)
    missing = [r for r in rejected if r.reason == "file_missing"]
    assert len(missing) == 1997 and all(not r.key for r in missing)
    assert {"part-0000.tar", "part-1998.tar"} <= {r.source_id for r in missing}
    assert manifest.splits["train"].num_samples == 6
    # None of them there: one line before anything is read.
    section = section.model_copy(
        update={"source": section.source.model_copy(update={"urls": f"{root.uri}/x-{{0..9}}.tar"})}
    )
    with pytest.raises(DataError, match=r"none of the 10 shards .* exist"):
        wds_index.plan_index(section, MAX_MEMBER_BYTES)


def test_the_default_class_bound_is_a_million():
    section = config_from_dict({"shard": {"source": {"kind": "webdataset", "urls": "/x"}}}).shard
    assert section.source.max_classes == 1_000_000
