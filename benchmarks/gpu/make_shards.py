"""A JPEG shard set of formula-driven (fractal) images for the GPU check, small enough to travel
to the GPU machine (its 64 MiB per call): the layout `vitpipe shard` writes (tar shards of
`.jpg` + `.cls` + `.json` samples and a `manifest.json`), rendered by the `fractal` source's own
renderer and encoded and packed by the shard writer's own code, here in one process, without
Ray, so that it also runs where Ray is absent.

    python benchmarks/gpu/make_shards.py .gpu_shards --classes 16 --per-class 160 --size 256
    python benchmarks/gpu/make_shards.py BIG --replicate .gpu_shards --copies 20

`--replicate` lists an existing set's shards `--copies` times under new names (links, no bytes
copied): a GPU consumes the 2560 images in under a second, and each epoch restarts the
dataloader workers, so without it the check would time epoch boundaries, not the pipeline.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pipelines.data.image_encode import EncodeOptions, prepare_image  # noqa: E402
from pipelines.data.manifest import (  # noqa: E402
    Manifest,
    ShardInfo,
    SplitInfo,
    read_manifest,
    write_manifest,
)
from pipelines.data.shard_writer import ShardSample, tar_bytes  # noqa: E402
from pipelines.data.sources.base import Decoded  # noqa: E402
from pipelines.data.sources.fractal import render  # noqa: E402
from pipelines.storage import locate  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--classes", type=int, default=16)
    p.add_argument("--per-class", type=int, default=160)
    p.add_argument("--size", type=int, default=256, help="square images of this many pixels")
    p.add_argument("--per-shard", type=int, default=256)
    p.add_argument("--points", type=int, default=20_000, help="chaos-game points per image")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality (baseline, 4:2:0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--replicate", type=Path, default=None, metavar="SHARD_DIR")
    p.add_argument("--copies", type=int, default=1)
    return p.parse_args(argv)


def write_shards(args: argparse.Namespace) -> Manifest:
    """Samples interleave the classes (sample i is class i % classes), `per_shard` a shard;
    each image encoded and packed by the code `vitpipe shard` runs."""
    args.out.mkdir(parents=True, exist_ok=True)
    total = args.classes * args.per_class
    classes = tuple(f"fractal_{c:03d}" for c in range(args.classes))
    options = EncodeOptions(jpeg_quality=args.quality)
    shards = []
    for s, start in enumerate(range(0, total, args.per_shard)):
        samples = []
        for i in range(start, min(start + args.per_shard, total)):
            label, index = i % args.classes, i // args.classes
            image = render(args.seed, label, index, args.size, args.points)
            prepared = prepare_image(Decoded(image, (args.size, args.size)), options)
            key = f"fractal_{label:03d}_{index:05d}"
            samples.append(ShardSample(key, label, classes[label], "fractal", prepared))
        data = tar_bytes(samples)
        path = args.out / f"train-{s:06d}.tar"
        path.write_bytes(data)
        shards.append(
            ShardInfo(path.name, len(samples), len(data), hashlib.sha256(data).hexdigest())
        )
    source = {"kind": "fractal", "seed": args.seed, "image_size": args.size, "note": __name__}
    manifest = Manifest(classes, {"train": SplitInfo(tuple(shards))}, source)
    write_manifest(locate(str(args.out)), manifest)
    return manifest


def replicate(source: Path, out: Path, copies: int) -> Manifest:
    """`source`'s train shards `copies` times over, as links named train-NNNNNN.tar in `out`."""
    original = read_manifest(locate(str(source)))
    out.mkdir(parents=True, exist_ok=True)
    shards = []
    for _ in range(copies):
        for shard in original.split("train").shards:
            name = f"train-{len(shards):06d}.tar"
            target = (source / shard.name).resolve()
            try:
                os.link(target, out / name)
            except OSError:  # another filesystem
                os.symlink(target, out / name)
            shards.append(ShardInfo(name, shard.samples, shard.bytes, shard.sha256))
    manifest = Manifest(
        original.classes, {"train": SplitInfo(tuple(shards))}, {**original.source, "copies": copies}
    )
    write_manifest(locate(str(out)), manifest)
    return manifest


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.replicate is not None:
        manifest = replicate(args.replicate, args.out, args.copies)
        info = manifest.split("train")
        print(f"listed {info.num_samples} samples ({args.copies} copies) in {args.out}")
        return
    manifest = write_shards(args)
    info = manifest.split("train")
    print(
        f"wrote {info.num_samples} JPEGs ({args.size} px, {args.classes} classes) in "
        f"{len(info.shards)} shards, {info.num_bytes / 2**20:.1f} MiB, to {args.out}"
    )


if __name__ == "__main__":
    main()
