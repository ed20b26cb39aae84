"""Hostile inputs to `vitpipe shard` and the loader: directory symlinks,
FIFOs, devices and oversized files are refused with a reason in rejected.parquet, never followed,
never hung on; a shard that is a symlink out of the shard dir is refused. No Ray: the shard
writer's pure functions run in this process."""

from __future__ import annotations

import csv
import os
import signal
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines.config import config_from_dict
from pipelines.data import shard_set
from pipelines.data.rejects import read_rejects
from pipelines.data.shard_writer import write_shard
from pipelines.errors import DataError

from shard_fixtures import make_loader, write_shard_set


@pytest.fixture(autouse=True)
def _no_hang():
    """A FIFO read that blocks would hang the suite: fail after 60 s instead."""

    def fail(*_):
        raise TimeoutError("a read blocked (FIFO?)")

    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def _png(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(path)


def _shard(tmp_path: Path, source: dict, **shard) -> tuple:
    """Run the shard stage without Ray: prepare, write every shard here, finish."""
    section = config_from_dict(
        {"shard": {"source": source, "output": str(tmp_path / "out"), **shard}}
    ).shard
    job, plan = shard_set.prepare(section)
    shard_set.begin(job.output, plan)
    results = [write_shard(job, task) for task in plan.shards]
    manifest, _ = shard_set.finish(job, plan, results, section)
    rejects = {r.source_id: r for r in read_rejects(job.output)}
    return manifest, rejects


def test_imagefolder_does_not_follow_directory_links_or_read_special_files(tmp_path):
    root = tmp_path / "images"
    for c in ("a", "b"):
        for i in range(3):
            _png(root / c / f"{i}.png", hash((c, i)) % 1000)
    (root / "a" / "loop").symlink_to("..")  # would re-enter the root forever
    (root / "b" / "escape").symlink_to(tmp_path)  # a directory outside
    outside = tmp_path / "secret.png"
    _png(outside, 7)
    (root / "a" / "leak.png").symlink_to(outside)  # a file outside
    (root / "a" / "inside.png").symlink_to(root / "b" / "0.png")  # inside: allowed
    os.mkfifo(root / "a" / "pipe.png")
    (root / "b" / "big.png").write_bytes(b"\x89PNG" + b"\0" * 5000)

    manifest, rejects = _shard(
        tmp_path, {"kind": "imagefolder", "path": str(root), "max_file_bytes": 4000}
    )
    assert manifest.splits["train"].num_samples == 7  # 6 files + the link inside the root
    assert rejects["a/loop"].reason == "not_regular_file"
    assert rejects["b/escape"].reason == "outside_root"
    assert rejects["a/leak.png"].reason == "outside_root"
    assert rejects["a/pipe.png"].reason == "not_regular_file"
    assert rejects["b/big.png"].reason == "too_large"


def test_csv_and_parquet_rows_pointing_at_fifos_devices_or_huge_files_are_rejects(tmp_path):
    _png(tmp_path / "ok.png", 1)
    os.mkfifo(tmp_path / "fifo.png")
    (tmp_path / "huge.png").write_bytes(b"\0" * 10_000)
    rows = [("ok.png", 0), ("fifo.png", 1), ("/dev/zero", 0), ("huge.png", 1)]
    with open(tmp_path / "list.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        writer.writerows(rows)
    source = {"kind": "csv", "path": str(tmp_path / "list.csv"), "max_file_bytes": 8000}
    manifest, rejects = _shard(tmp_path / "c", source)
    assert manifest.splits["train"].num_samples == 1
    assert rejects["fifo.png"].reason == "not_regular_file"
    assert rejects["/dev/zero"].reason == "not_regular_file"
    assert rejects["huge.png"].reason == "too_large"

    table = pa.table(
        {
            "image": [str(tmp_path / p) if p[0] != "/" else p for p, _ in rows],
            "label": [label for _, label in rows],
        }
    )
    pq.write_table(table, tmp_path / "d.parquet")
    source = {"kind": "parquet", "path": str(tmp_path / "d.parquet"), "max_file_bytes": 8000}
    manifest, rejects = _shard(tmp_path / "p", source)
    assert manifest.splits["train"].num_samples == 1
    reasons = sorted(r.reason for r in rejects.values())
    assert reasons == ["not_regular_file", "not_regular_file", "too_large"]


def test_a_shard_that_links_out_of_the_shard_dir_is_refused(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    write_shard_set(elsewhere, {"train": [8]})
    root = tmp_path / "shards"
    write_shard_set(root, {"train": [8]})
    (root / "train-000000.tar").unlink()
    (root / "train-000000.tar").symlink_to(elsewhere / "train-000000.tar")
    with pytest.raises(DataError, match="train-000000.tar.*outside"):
        list(make_loader(root, num_workers=0))
