"""Images/s of vitpipe's ShardLoader against torchvision ImageFolder + DataLoader.

Both read the same generated photos-like JPEGs: ImageFolder the originals (~256 px), the shards
the same images pre-resized at shard time (shorter side `--shard-size`, as `vitpipe shard` does
with `shard.max_size`). Both decode with the same decoder (`--baseline-decoder same`) or the
baseline uses PIL, torchvision's default loader (`pil`), and both run RandomResizedCrop 224 +
flip + float + normalise with the same worker count and batch size. Runs are interleaved
(shards, ImageFolder, shards, ...), each preceded by one warm-up, and medians are compared.

Shard verification (`data.verify_shards`) is measured in the same run: `shards` trusts the files
(`never`), `shards[verify]` hashes every shard before its first sample (what `first_epoch` does in
a run's first epoch, and `always` in every epoch); the ratio is the first epoch's cost.

    .venv/bin/python benchmarks/loader.py                       # ~2 min on 2 cores
    .venv/bin/python benchmarks/loader.py --images 4000 --rounds 5 --workers 4
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2 as T
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.config.data import AugmentSection, DataSection  # noqa: E402
from pipelines.data.image_encode import EncodeOptions, prepare_image  # noqa: E402
from pipelines.data.loader.shard_loader import ShardLoader  # noqa: E402
from pipelines.data.loader.transforms import _decode_rgb  # noqa: E402
from pipelines.data.manifest import Manifest, ShardInfo, SplitInfo, write_manifest  # noqa: E402
from pipelines.data.shard_writer import ShardSample, tar_bytes  # noqa: E402
from pipelines.storage import locate  # noqa: E402

warnings.filterwarnings("ignore", category=DeprecationWarning)
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def _photo(rng: np.random.Generator, height: int, width: int) -> Image.Image:
    """A smooth, textured image: JPEG sizes and decode cost close to real photos."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.zeros((height, width, 3), np.float32)
    for c in range(3):
        fx, fy, phase = rng.uniform(0.005, 0.05, 2).tolist() + [rng.uniform(0, 6.3)]
        img[..., c] = 128 + 90 * np.sin(fx * x + fy * y + phase)
    for _ in range(6):
        cy, cx, r = rng.integers(0, height), rng.integers(0, width), rng.integers(10, 60)
        mask = (y - cy) ** 2 + (x - cx) ** 2 < r * r
        img[mask] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 12, img.shape)
    return Image.fromarray(img.clip(0, 255).astype(np.uint8))


def generate(
    root: Path, num_images: int, size: int, shard_size: int, per_shard: int, num_classes: int = 10
) -> tuple[Path, Path]:
    """An ImageFolder of JPEGs and the same images in shards, prepared and packed by the code
    `vitpipe shard` runs (`prepare_image` with `shard.max_size`, `tar_bytes`)."""
    folder, shards = root / "imagefolder", root / "shards"
    rng = np.random.default_rng(0)
    options = EncodeOptions(jpeg_quality=90, max_size=shard_size)
    classes = tuple(f"class{c:02d}" for c in range(num_classes))
    samples = []
    for i in range(num_images):
        label = i % num_classes
        width = int(size * rng.uniform(1.0, 1.33))
        path = folder / classes[label] / f"img{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        _photo(rng, size, width).save(path, quality=90)
        image = prepare_image(path.read_bytes(), options)
        samples.append(ShardSample(f"img{i:05d}", label, classes[label], path.name, image))
    shards.mkdir(parents=True)
    infos = []
    for s in range(0, num_images, per_shard):
        name = f"train-{s // per_shard:06d}.tar"
        blob = tar_bytes(samples[s : s + per_shard])
        (shards / name).write_bytes(blob)
        count = len(samples[s : s + per_shard])
        infos.append(ShardInfo(name, count, len(blob), hashlib.sha256(blob).hexdigest()))
    write_manifest(locate(str(shards)), Manifest(classes, {"train": SplitInfo(tuple(infos))}))
    return folder, shards


def _tensor_loader(path: str) -> torch.Tensor:
    with open(path, "rb") as f:
        return _decode_rgb(f.read())


def run_imagefolder(folder: Path, args, decoder: str) -> float:
    steps = [T.RandomResizedCrop(args.img_size, antialias=True), T.RandomHorizontalFlip()]
    if decoder == "pil":
        steps.append(T.ToImage())
    steps += [T.ToDtype(torch.float32, scale=True), T.Normalize(MEAN, STD)]
    dataset = ImageFolder(
        str(folder),
        transform=T.Compose(steps),
        **({"loader": _tensor_loader} if decoder == "same" else {}),
    )
    loader = DataLoader(
        dataset,
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=args.workers,
        prefetch_factor=2 if args.workers else None,
    )
    start, images = time.perf_counter(), 0
    for batch, _ in loader:
        images += batch.shape[0]
    return images / (time.perf_counter() - start)


def run_shards(shards: Path, args, epoch: int, verify: str = "never") -> float:
    loader = ShardLoader(
        str(shards),
        "train",
        rank=0,
        world_size=1,
        micro_batch_size=args.batch_size,
        seed=0,
        data=DataSection(
            num_workers=args.workers, shuffle_buffer=args.shuffle_buffer, verify_shards=verify
        ),
        augment=AugmentSection(mean=MEAN, std=STD),
        img_size=args.img_size,
    )
    loader.set_epoch(epoch)
    start, images = time.perf_counter(), 0
    for batch in loader:
        images += batch["image"].shape[0]
    return images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=256, help="shorter side of the originals")
    parser.add_argument("--shard-size", type=int, default=160, help="shorter side in shards")
    parser.add_argument("--per-shard", type=int, default=250)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--shuffle-buffer", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline-decoder", choices=["same", "pil", "both"], default="both")
    parser.add_argument("--dir", type=Path, default=None, help="default: a temporary directory")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = args.dir or Path(tmp)
        t0 = time.perf_counter()
        folder, shards = generate(root, args.images, args.size, args.shard_size, args.per_shard)
        folder_bytes = sum(p.stat().st_size for p in folder.rglob("*.jpg"))
        shard_bytes = sum(p.stat().st_size for p in shards.glob("*.tar"))
        print(f"generated in {time.perf_counter() - t0:.1f}s")
        print(
            f"ImageFolder: {args.images} JPEG files, shorter side {args.size} px, width "
            f"{args.size}-{int(args.size * 1.33)} px, {folder_bytes / 2**20:.1f} MiB"
        )
        print(
            f"shards:      the same images pre-resized to shorter side {args.shard_size} px, "
            f"{-(-args.images // args.per_shard)} tars, {shard_bytes / 2**20:.1f} MiB"
        )
        print(
            f"both: {args.workers} workers, batch {args.batch_size}, RandomResizedCrop "
            f"{args.img_size} + flip + float + normalise; torch threads {torch.get_num_threads()}"
        )

        decoders = ["same", "pil"] if args.baseline_decoder == "both" else [args.baseline_decoder]
        runs = {
            "shards": lambda e: run_shards(shards, args, e),
            "shards[verify]": lambda e: run_shards(shards, args, e, verify="always"),
        }
        for dec in decoders:
            runs[f"imagefolder[{dec}]"] = lambda e, d=dec: run_imagefolder(folder, args, d)
        results: dict[str, list[float]] = {name: [] for name in runs}
        for fn in runs.values():
            fn(0)  # warm-up: page cache, lazy imports
        for r in range(args.rounds):
            for name, fn in runs.items():
                results[name].append(fn(r + 1))
                print(f"round {r + 1} {name:20s} {results[name][-1]:8.1f} images/s", flush=True)
        medians = {name: statistics.median(v) for name, v in results.items()}
        print()
        for name, value in medians.items():
            print(f"median {name:20s} {value:8.1f} images/s")
        print(
            "ratio shards[verify] / shards (sha256 of every shard before use, the first "
            f"epoch's cost): {medians['shards[verify]'] / medians['shards']:.3f}x"
        )
        for dec in decoders:
            base = medians[f"imagefolder[{dec}]"]
            decoder = "same decoder" if dec == "same" else "PIL, torchvision's default"
            print(
                f"ratio shards / imagefolder[{dec}] ({decoder}): "
                f"{medians['shards'] / base:.2f}x (goal >= 2x)"
            )


if __name__ == "__main__":
    main()
