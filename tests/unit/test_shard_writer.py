"""Plan, tar and per-shard writing without Ray: real files through `pipelines.storage`."""

from __future__ import annotations

import hashlib
import io
import os
import random
import tarfile
from dataclasses import replace

import numpy as np
import webdataset as wds
from PIL import Image

from pipelines.data.image_encode import EncodeOptions, PreparedImage
from pipelines.data.rejects import read_rejects, write_rejects
from pipelines.data.shard_writer import (
    ShardSample,
    ShardWriteSettings,
    build_shard,
    state_file,
    tar_bytes,
    write_shard,
)
from pipelines.data.sources import Rejected, SampleRef, SourceIndex
from pipelines.data.sources.fractal import FractalSource
from pipelines.data.write_plan import make_plan, split_refs
from pipelines.storage import locate


def _refs(counts: dict[int, int]) -> tuple[SampleRef, ...]:
    return tuple(
        SampleRef(f"c{label}_{i:04d}", label, f"c{label}/{i}")
        for label, n in counts.items()
        for i in range(n)
    )


def _png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(out, "PNG")
    return out.getvalue()


# -- plan ----------------------------------------------------------------------------------


def test_split_is_stratified_and_keeps_small_classes_in_train():
    refs = _refs({0: 100, 1: 7, 2: 2, 3: 1})
    splits = split_refs(refs, 0.2, seed=0)
    val = [r.label for r in splits["val"]]
    assert val.count(0) == 20 and val.count(1) == 1 and val.count(2) == 1 and val.count(3) == 0
    train = [r.label for r in splits["train"]]
    assert {0, 1, 2, 3} <= set(train)
    assert len(val) + len(train) == len(refs)
    assert split_refs(refs, 0.0, seed=0) == {"train": list(refs)}


def test_plan_is_deterministic_mixes_classes_and_ignores_index_order():
    refs = _refs({c: 50 for c in range(5)})
    settings = {"source": {"kind": "test"}}
    plan = make_plan(
        SourceIndex(("a", "b", "c", "d", "e"), refs),
        samples_per_shard=40,
        val_fraction=0.1,
        seed=3,
        settings=settings,
    )
    shuffled = list(refs)
    random.Random(0).shuffle(shuffled)
    again = make_plan(
        SourceIndex(("a", "b", "c", "d", "e"), tuple(shuffled)),
        samples_per_shard=40,
        val_fraction=0.1,
        seed=3,
        settings=settings,
    )
    assert plan == again
    assert [t.name for t in plan.shards][:2] == ["train-000000.tar", "train-000001.tar"]
    assert [len(t.refs) for t in plan.shards] == [40, 40, 40, 40, 40, 25, 25]
    assert plan.splits == ("train", "val")
    assert len({r.label for r in plan.shards[0].refs}) == 5  # shards mix classes
    other_seed = make_plan(
        SourceIndex(plan.classes, refs),
        samples_per_shard=40,
        val_fraction=0.1,
        seed=4,
        settings=settings,
    )
    assert other_seed.shards[0].refs != plan.shards[0].refs
    changed = make_plan(
        SourceIndex(plan.classes, refs),
        samples_per_shard=40,
        val_fraction=0.1,
        seed=3,
        settings={"source": {"kind": "test"}, "encode": 1},
    )
    assert all(
        a.fingerprint != b.fingerprint for a, b in zip(plan.shards, changed.shards, strict=True)
    )
    assert plan.fingerprint != changed.fingerprint


# -- tar -----------------------------------------------------------------------------------


def test_tar_is_deterministic_and_webdataset_reads_it(tmp_path):
    samples = [
        ShardSample(
            f"k{i}", i % 3, f"class{i % 3}", f"src/{i}.png", PreparedImage("png", _png(i), (8, 8))
        )
        for i in range(5)
    ]
    data = tar_bytes(samples)
    assert data == tar_bytes(samples)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
    assert [m.name for m in members[:3]] == ["k0.cls", "k0.json", "k0.png"]
    assert {(m.mtime, m.mode, m.uid, m.gid, m.uname, m.gname) for m in members} == {
        (0, 0o444, 0, 0, "", "")
    }
    path = tmp_path / "s.tar"
    path.write_bytes(data)
    rows = list(wds.WebDataset(str(path), shardshuffle=False).decode("pil"))
    assert [r["__key__"] for r in rows] == [f"k{i}" for i in range(5)]
    assert rows[1]["cls"] == 1
    assert rows[1]["json"] == {
        "label_name": "class1",
        "original_size": [8, 8],
        "source": "src/1.png",
    }
    assert rows[1]["png"].size == (8, 8)


# -- writing one shard ---------------------------------------------------------------------


def _fractal_job(tmp_path, **options):
    source = FractalSource(3, 4, 16, 500, seed=0)
    index = source.index()
    plan = make_plan(index, samples_per_shard=5, val_fraction=0.0, seed=0, settings=options)
    job = ShardWriteSettings(locate(str(tmp_path)), source, index.classes, EncodeOptions(**options))
    return job, plan


def test_write_shard_skips_verified_and_rewrites_changed(tmp_path):
    job, plan = _fractal_job(tmp_path, image_format="png")
    task = plan.shards[0]
    first = write_shard(job, task)
    path = tmp_path / task.name
    assert not first.skipped and first.samples == 5
    assert first.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert state_file(job.output, task.name).is_file()
    stat = os.stat(path)

    second = write_shard(job, task)
    assert second.skipped and second.sha256 == first.sha256
    assert os.stat(path).st_ino == stat.st_ino and os.stat(path).st_mtime_ns == stat.st_mtime_ns

    path.write_bytes(path.read_bytes()[:-1] + b"x")  # same size, different bytes
    third = write_shard(job, task)
    assert not third.skipped and hashlib.sha256(path.read_bytes()).hexdigest() == first.sha256

    jpeg_job, jpeg_plan = _fractal_job(tmp_path, image_format="jpeg")
    assert jpeg_plan.shards[0].fingerprint != task.fingerprint
    assert not write_shard(jpeg_job, jpeg_plan.shards[0]).skipped

    # no temporary files are left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["_state", task.name]


def test_build_shard_collects_rejects_without_stopping(tmp_path):
    job, plan = _fractal_job(tmp_path)
    task = plan.shards[0]

    class HalfBroken(FractalSource):
        def load(self, refs):
            for i, (ref, item) in enumerate(super().load(refs)):
                if i == 1:
                    yield ref, b""
                elif i == 2:
                    yield ref, Rejected(ref.source_id, "file_missing", "gone", ref.key)
                else:
                    yield ref, item

    source = HalfBroken(3, 4, 16, 500, seed=0)
    data, samples, rejected = build_shard(task, source, job.classes, job.options)
    assert samples == 3 and data is not None
    assert [r.reason for r in rejected] == ["zero_bytes", "file_missing"]
    assert rejected[0].key == task.refs[1].key


def test_rejects_parquet_round_trip(tmp_path):
    root = locate(str(tmp_path))
    rows = [Rejected("b.jpg", "truncated", "x", "b"), Rejected("a.jpg", "zero_bytes", "", "a")]
    assert write_rejects(root, rows)
    assert read_rejects(root) == sorted(rows, key=lambda r: r.source_id)
    assert not write_rejects(root, list(reversed(rows)))  # unchanged: not rewritten
    assert write_rejects(root, [replace(rows[0], detail="y")])
