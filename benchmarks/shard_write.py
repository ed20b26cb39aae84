"""Shard-writing throughput on Ray with 1 and N workers, and the scaling ratio.

Baselines measured in the same run: the same shards written in this process without Ray
(`in-process`), and Ray with one worker. The source is a generated ImageFolder of JPEGs
(default 1,500 at ~256 px, resized to a 160 px shorter side on write) or the fractal source.
Ray start-up and worker start-up are excluded (a warm-up job runs first); the timed part is the
write phase reported in summary.json (`images_per_sec`).

    .venv/bin/python benchmarks/shard_write.py
    .venv/bin/python benchmarks/shard_write.py --source fractal --num-images 4000 --workers 1 2 4
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from launch.processes.ray_cluster import connect  # noqa: E402
from launch.stages.shard import run_shard  # noqa: E402
from pipelines.config import ClusterSection, StageConfig, config_from_dict  # noqa: E402
from pipelines.data import shard_set  # noqa: E402
from pipelines.data.manifest import read_manifest  # noqa: E402
from pipelines.data.shard_writer import write_shard  # noqa: E402


def make_imagefolder(root: Path, num_images: int, size: int, num_classes: int = 10) -> None:
    """Photo-like JPEGs (smooth colour fields plus grain), ~size px, a few aspect ratios."""
    rng = np.random.default_rng(0)
    for i in range(num_images):
        folder = root / f"class_{i % num_classes:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        height = size
        width = int(size * (1.0, 1.25, 1.5)[i % 3])
        coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
        grain = rng.integers(-12, 13, (height, width, 3), dtype=np.int16)
        pixels = np.clip(np.asarray(image, dtype=np.int16) + grain, 0, 255).astype(np.uint8)
        out = io.BytesIO()
        Image.fromarray(pixels).save(out, "JPEG", quality=90)
        (folder / f"img_{i:06d}.jpg").write_bytes(out.getvalue())


def job_config(args: argparse.Namespace, data: Path, output: Path, workers: int) -> StageConfig:
    if args.source == "fractal":
        per_class = max(1, args.num_images // 10)
        source = {"kind": "fractal", "num_classes": 10, "images_per_class": per_class,
                  "image_size": args.fractal_size, "num_points": 5000}  # fmt: skip
        shard = {"image_format": "png"}
    else:
        source = {"kind": "imagefolder", "path": str(data)}
        shard = {"image_format": "jpeg", "max_size": args.max_size}
    shard.update(
        source=source,
        output=str(output),
        samples_per_shard=args.samples_per_shard,
        num_workers=workers,
    )
    return config_from_dict({"shard": shard, "tracking": {"enabled": False}})


def in_process(config: StageConfig) -> float:
    """Images/s writing every shard in this process, without Ray."""
    job, plan = shard_set.prepare(config.shard)
    shard_set.begin(job.output, plan)
    started = time.perf_counter()
    for task in plan.shards:
        write_shard(job, task)
    return plan.num_samples() / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", choices=("imagefolder", "fractal"), default="imagefolder")
    parser.add_argument("--num-images", type=int, default=1500)
    parser.add_argument("--size", type=int, default=256, help="imagefolder: input height")
    parser.add_argument("--max-size", type=int, default=160, help="imagefolder: resize on write")
    parser.add_argument("--fractal-size", type=int, default=32)
    parser.add_argument("--samples-per-shard", type=int, default=100)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=2, help="best of this many runs")
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    scratch = Path(tempfile.mkdtemp(prefix="vitpipe-shard-bench-"))
    try:
        data = scratch / "images"
        if args.source == "imagefolder":
            started = time.perf_counter()
            make_imagefolder(data, args.num_images, args.size)
            print(f"generated {args.num_images} JPEGs in {time.perf_counter() - started:.1f} s")
        base = max(
            in_process(job_config(args, data, scratch / f"base{i}", 1)) for i in range(args.repeats)
        )

        connect(ClusterSection(), num_cpus=max(args.workers))
        warm = job_config(args, data, scratch / "warm", max(args.workers))
        run_shard(warm, progress=False)  # starts the workers; not timed

        rates: dict[int, float] = {}
        busy: dict[int, float] = {}
        shas: set[str] = set()
        for workers in args.workers:
            best = 0.0
            for repeat in range(args.repeats):
                output = scratch / f"w{workers}-{repeat}"
                summary = run_shard(job_config(args, data, output, workers), progress=False)
                if summary["images_per_sec"] > best:
                    best = summary["images_per_sec"]
                    # CPUs the tasks actually got: < workers when the machine is shared
                    busy[workers] = summary["task_cpu_s"] / summary["write_elapsed_s"]
                manifest = read_manifest(str(output))
                shas.add(
                    str([s.sha256 for split in manifest.splits.values() for s in split.shards])
                )
            rates[workers] = best

        first = args.workers[0]
        print(
            f"source: {args.source}, {args.num_images} images, {os.cpu_count()} CPUs, "
            f"load average {load_before:.1f} before / {os.getloadavg()[0]:.1f} after "
            "(other work on the machine lowers the ratios)"
        )
        print(f"shards identical across worker counts: {len(shas) == 1}")
        print(f"  in-process (no Ray)      {base:8.1f} images/s")
        for workers, rate in rates.items():
            print(
                f"  Ray, {workers} worker(s)         {rate:8.1f} images/s   "
                f"x{rate / rates[first]:.2f} vs {first} worker(s)   x{rate / base:.2f} vs "
                f"in-process   (tasks got {busy[workers]:.2f} CPUs: "
                f"{rate / busy[workers]:.0f} images per CPU-second)"
            )
        if len(rates) > 1:
            last = args.workers[-1]
            print(f"scaling {first} -> {last} workers: {rates[last] / rates[first]:.2f}x")
            per_cpu = (rates[last] / busy[last]) / (rates[first] / busy[first])
            print(
                f"work per CPU-second at {last} vs {first} workers: {per_cpu:.2f} "
                "(1.00 = no parallel overhead; scaling then follows the free CPUs)"
            )
    finally:
        import ray

        ray.shutdown()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
