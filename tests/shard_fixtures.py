"""Tiny, real shard sets on disk for loader tests: tar files with PNG/JPEG members + manifest.

The layout is the one `vitpipe shard` writes: `<root>/<split>-NNNNNN.tar` holding, per sample,
`<key>.cls` (ASCII int), `<key>.json` and `<key>.png|jpg`, and `<root>/manifest.json`.
Faults are injected explicitly: garbage image bytes or a missing `.cls` for chosen keys, and
`truncate_shard` cuts a written tar in the middle.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from pipelines.data.manifest import Manifest, ShardInfo, SplitInfo, write_manifest
from pipelines.storage import locate


def sample_key(split: str, shard: int, index: int) -> str:
    return f"{split}{shard:03d}_{index:04d}"


def sample_label(shard: int, index: int, num_classes: int) -> int:
    return (shard * 7 + index) % num_classes


def shard_name(split: str, shard: int) -> str:
    return f"{split}-{shard:06d}.tar"


def _image_bytes(key: str, size: int, image_format: str, smooth: bool = False) -> bytes:
    rng = np.random.default_rng(int(hashlib.sha256(key.encode()).hexdigest()[:8], 16))
    if smooth:  # a few low-frequency waves: resampling methods agree on these
        y, x = np.mgrid[0:size, 0 : size + 4] / size
        phase, freq = rng.uniform(0, 6.3, 3), rng.uniform(0.2, 0.6, 3)
        waves = [
            np.sin(2 * np.pi * f * (x + y * k) + p)
            for f, p, k in zip(freq, phase, (0, 1, -1), strict=True)
        ]
        pixels = (127.5 + 120 * np.stack(waves, -1)).astype(np.uint8)
    else:
        pixels = rng.integers(0, 256, (size, size + 4, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG" if image_format == "png" else "JPEG")
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def write_shard_set(
    root: Path,
    splits: Mapping[str, Sequence[int]],
    *,
    num_classes: int = 5,
    image_size: int = 32,
    image_format: str = "png",
    bad_image: Collection[str] = (),
    no_cls: Collection[str] = (),
    bad_after_header: Collection[str] = (),
    smooth: bool = False,
    key_prefix: str = "",
    classes: tuple[str, ...] | None = None,
) -> Manifest:
    """Write shards with the given sample counts per split, and their manifest; return it.
    `key_prefix` starts every key (two sets with different prefixes share no key); `classes`
    names the manifest's classes (default class0, class1, ...)."""
    root.mkdir(parents=True, exist_ok=True)
    ext = "png" if image_format == "png" else "jpg"
    infos: dict[str, SplitInfo] = {}
    for split, counts in splits.items():
        shards = []
        for s, count in enumerate(counts):
            path = root / shard_name(split, s)
            with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
                for i in range(count):
                    key = key_prefix + sample_key(split, s, i)
                    label = sample_label(s, i, num_classes)
                    if key not in no_cls:
                        _add(tar, f"{key}.cls", str(label).encode())
                    meta = {
                        "source": "test",
                        "original_size": [image_size + 4, image_size],
                        "label_name": f"class{label}",
                    }
                    _add(tar, f"{key}.json", json.dumps(meta).encode())
                    image = (
                        b"\x89PNG garbage" * 5
                        if key in bad_image
                        else _image_bytes(key, image_size, image_format, smooth)
                    )
                    if key in bad_after_header:  # a valid header, then garbage
                        image = image[: len(image) // 3] + b"\x00" * 64
                    _add(tar, f"{key}.{ext}", image)
            data = path.read_bytes()
            shards.append(ShardInfo(path.name, count, len(data), hashlib.sha256(data).hexdigest()))
        infos[split] = SplitInfo(tuple(shards))
    names = classes or tuple(f"class{i}" for i in range(num_classes))
    manifest = Manifest(names, infos, {"kind": "test"})
    write_manifest(locate(str(root)), manifest)
    return manifest


def truncate_shard(root: Path, name: str, keep_fraction: float = 0.5) -> None:
    """Cut a written shard to a fraction of its bytes (a crashed or partial upload)."""
    path = root / name
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep_fraction)])


def relabel_to_zero(path: Path, *, keep_mtime: bool = False) -> None:
    """Rewrite every `.cls` of a shard to 0: same members, same sizes, other content; with
    `keep_mtime`, the file's mtime is put back (as `cp -p` or `rsync -t` would)."""
    stat = path.stat()
    src = io.BytesIO(path.read_bytes())
    out = io.BytesIO()
    with tarfile.open(fileobj=src) as tar, tarfile.open(fileobj=out, mode="w") as new:
        for member in tar.getmembers():
            data = tar.extractfile(member).read()
            if member.name.endswith(".cls"):
                data = b"0" * len(data)
            member.size = len(data)
            new.addfile(member, io.BytesIO(data))
    path.write_bytes(out.getvalue())
    if keep_mtime:
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def keys_of(split: str, counts: Sequence[int]) -> list[str]:
    """Every key of a split, in manifest order."""
    return [sample_key(split, s, i) for s, n in enumerate(counts) for i in range(n)]


def make_loader(
    root: Path | list[dict],
    *,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 2,
    micro_batch_size: int = 4,
    shuffle_buffer: int = 8,
    seed: int = 0,
    split: str = "train",
    train: bool = True,
    img_size: int = 16,
    max_skip_fraction: float = 0.0,
    decode_on=None,
    verify_shards: str = "first_epoch",
    device=None,
    repeated_aug: int = 1,
    mix_classes: str | None = None,
    exclude=None,
    **augment: object,
):
    """A ShardLoader with test-sized defaults, built as every call site builds one
    (`ShardLoader.from_config`); imported lazily to keep this module light. `root` may be a
    mix (`data.train_shards` as a list of sources)."""
    from pipelines.config import config_from_dict
    from pipelines.data.loader.shard_loader import ShardLoader
    from pipelines.distributed import DistContext

    config = config_from_dict(
        {
            "data": {
                "train_shards": root if isinstance(root, list) else str(root),
                "mix_classes": mix_classes,
                "num_workers": num_workers,
                "shuffle_buffer": shuffle_buffer,
                "max_skip_fraction": max_skip_fraction,
                "prefetch_factor": 2,
                "verify_shards": verify_shards,
                "repeated_aug": repeated_aug,
            },
            "augment": augment,
            "train": {
                "micro_batch_size": micro_batch_size,
                "global_batch_size": micro_batch_size * world_size,
                "seed": seed,
            },
            "cluster": {"num_workers": world_size},
        }
    )
    ctx = DistContext(rank=rank, world_size=world_size)
    return ShardLoader.from_config(
        config,
        ctx,
        split,
        train=train,
        img_size=img_size,
        decode_on=decode_on,
        device=device,
        exclude=exclude,
    )
