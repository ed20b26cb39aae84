"""Indexing users' own WebDataset shards in place: MB/s on Ray beside `cat` and `sha256sum`.

Generates `--shards` tars with `webdataset.ShardWriter` (ImageNet-style `KEY.jpg` + `KEY.cls`,
incompressible payloads of `--image-kb`), warms the page cache, then times, round by round:
`cat` of every shard to /dev/null (the read floor), `sha256sum` of every shard (the hash floor,
one process), and `vitpipe shard` with `shard.source.kind: webdataset` on `--workers` Ray workers
(the index phase from its summary, Ray start-up excluded; each round indexes from scratch). The
files sit in the page cache, so this measures CPU cost per byte, not disk speed (no threshold).

    .venv/bin/python benchmarks/wds_index.py                  # 200 shards x 1 MB, 2 workers
    .venv/bin/python benchmarks/wds_index.py --shards 400 --image-kb 100 --workers 4
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from launch.processes.ray_cluster import connect  # noqa: E402
from launch.stages.shard import run_shard  # noqa: E402
from pipelines.config import ClusterSection, config_from_dict  # noqa: E402


def make_shards(folder: Path, shards: int, per_shard: int, image_kb: int) -> list[Path]:
    import webdataset as wds

    folder.mkdir(parents=True)
    with wds.ShardWriter(str(folder / "bench-%06d.tar"), maxcount=per_shard, verbose=0) as sink:
        for i in range(shards * per_shard):
            # A JPEG marker then random bytes: the indexer never decodes, only reads and hashes.
            payload = b"\xff\xd8" + os.urandom(image_kb * 1024)
            sink.write({"__key__": f"img{i:08d}", "jpg": payload, "cls": i % 1000})
    return sorted(folder.glob("*.tar"))


def timed_command(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=200)
    parser.add_argument("--per-shard", type=int, default=20)
    parser.add_argument("--image-kb", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files = make_shards(root / "shards", args.shards, args.per_shard, args.image_kb)
        total_mb = sum(f.stat().st_size for f in files) / 2**20
        names = [str(f) for f in files]
        print(f"{len(files)} shards, {total_mb:.1f} MB, {args.per_shard} samples each")
        connect(ClusterSection(), num_cpus=args.workers)
        timings: dict[str, list[float]] = {"cat": [], "sha256sum": [], "index": []}
        config = config_from_dict(
            {
                "shard": {
                    "source": {"kind": "webdataset", "urls": str(root / "shards")},
                    "output": str(root / "index"),
                    "num_workers": args.workers,
                }
            }
        )
        timed_command(["cat", *names])  # warm the page cache
        run_shard(config, progress=False)  # warm the Ray workers
        for r in range(args.rounds):
            timings["cat"].append(timed_command(["cat", *names]))
            timings["sha256sum"].append(timed_command(["sha256sum", *names]))
            shutil.rmtree(root / "index")
            summary = run_shard(config, progress=False)
            timings["index"].append(summary["index_elapsed_s"])
            line = "  ".join(f"{k} {total_mb / v[-1]:7.1f} MB/s" for k, v in timings.items())
            print(f"round {r + 1}: {line}", flush=True)
        rerun = run_shard(config, progress=False)
        medians = {k: total_mb / statistics.median(v) for k, v in timings.items()}
        print()
        for name, value in medians.items():
            print(f"median {name:10s} {value:8.1f} MB/s")
        print(f"ratio index / cat:       {medians['index'] / medians['cat']:.3f}x")
        print(f"ratio index / sha256sum: {medians['index'] / medians['sha256sum']:.3f}x")
        print(
            f"re-run with nothing changed: {rerun['num_shards_skipped']} of {len(files)} shards "
            f"skipped in {rerun['index_elapsed_s']:.2f} s"
        )


if __name__ == "__main__":
    main()
