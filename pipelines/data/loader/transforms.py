"""Decode one raw sample and augment it; the randomness is a pure function of a per-sample seed.

Images are decoded to uint8 CHW tensors and cropped/flipped/RandAugmented in uint8 (cheap, and
what torchvision's v2 kernels are fastest on); the float conversion and normalisation run once
per batch. Augmentation draws from torch's default CPU generator, which is re-seeded for each
sample and restored afterwards: the result depends on (seed, epoch, global position) only, not on
which worker ran it or what ran before, which is what makes a resumed epoch bit-identical.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
import torchvision.transforms.v2 as T
from PIL import Image

try:  # libjpeg-turbo/libpng straight to a CHW tensor: about 2x faster than PIL + convert.
    from torchvision.io import ImageReadMode, decode_image

    # torchvision 0.29 deprecates its decoders in favour of TorchCodec, which we do not ship;
    # when they are removed the import fails and PIL takes over.
    warnings.filterwarnings(
        "ignore",
        message="The image decoding and encoding capabilities of TorchVision",
        category=DeprecationWarning,
    )
except ImportError:  # pragma: no cover - depends on the torchvision version
    decode_image = None

from pipelines.config.data import AugmentSection
from pipelines.data.labels import IMAGE_EXTENSIONS, LabelError, image_field, label_index, raw_label
from pipelines.data.loader.tar_reader import RawSample

Transform = Callable[[torch.Tensor], torch.Tensor]


class BadSample(Exception):
    """A sample that cannot be used; the message says why (never raised out of the loader)."""


def decode_sample(
    raw: RawSample,
    *,
    num_classes: int,
    max_pixels: int,
    label_key: str = "cls",
    classes: Mapping[str, int] | None = None,
) -> tuple[torch.Tensor, int]:
    """RawSample -> (uint8 RGB image (3, H, W), label); raises BadSample with the reason."""
    data, _, label = parse_sample(
        raw, num_classes=num_classes, max_pixels=max_pixels, label_key=label_key, classes=classes
    )
    try:
        return _decode_rgb(data), label
    except Exception as err:  # PIL and libjpeg/libpng raise many types on garbage bytes.
        raise BadSample(f"undecodable image: {type(err).__name__}: {err}") from None


def parse_sample(
    raw: RawSample,
    *,
    num_classes: int,
    max_pixels: int,
    label_key: str = "cls",
    classes: Mapping[str, int] | None = None,
) -> tuple[bytes, tuple[int, int], int]:
    """RawSample -> (encoded image, (width, height), label) from the header alone; raises
    BadSample with the reason. The label follows `pipelines.data.labels` (`label_key`, and
    `classes` mapping class names to indices for string labels)."""
    try:
        label = label_index(raw_label(raw.fields, label_key), classes or {}, num_classes)
    except LabelError as err:
        raise BadSample(str(err)) from None
    ext = image_field(raw.fields)
    data = raw.fields[ext] if ext is not None else None
    if data is None:
        raise BadSample(f"no image member (one of {', '.join(IMAGE_EXTENSIONS)})")
    try:
        # Header only: refuse decompression bombs before allocating the pixels.
        width, height = image_size(data)
    except Exception as err:  # PIL raises many types on garbage bytes.
        raise BadSample(f"undecodable image: {type(err).__name__}: {err}") from None
    if width * height > max_pixels:
        raise BadSample(f"{width}x{height} image exceeds data.max_pixels={max_pixels}")
    if width < 1 or height < 1:
        raise BadSample(f"image header says {width}x{height}")
    return data, (width, height), label


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the header: a few byte reads for PNG and JPEG, PIL otherwise."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data[:2] == b"\xff\xd8":
        size = _jpeg_size(data)
        if size is not None:
            return size
    with Image.open(io.BytesIO(data)) as probe:
        return probe.size


_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # start-of-frame variants


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """Walk the JPEG marker segments up to the start-of-frame; None if it looks malformed."""
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length field
            i += 2
            continue
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if marker in _SOF_MARKERS:
            if i + 9 > n:
                return None
            height = int.from_bytes(data[i + 5 : i + 7], "big")
            width = int.from_bytes(data[i + 7 : i + 9], "big")
            return width, height
        i += 2 + length
    return None


def _decode_rgb(data: bytes) -> torch.Tensor:
    if decode_image is not None:
        return decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), ImageReadMode.RGB)
    with Image.open(io.BytesIO(data)) as img:
        return torch.from_numpy(np.asarray(img.convert("RGB"))).permute(2, 0, 1)


class RandomErasing:
    """With probability `p`, replace one random box (2-33% of the image, aspect 0.3-3.3) with
    uniform noise: Zhong et al.'s random erasing as DeiT uses it (timm's per-pixel mode), done on
    uint8 in the worker; the noise, like every draw here, comes from the per-sample seed."""

    def __init__(self, p: float, scale=(0.02, 1 / 3), ratio=(0.3, 1 / 0.3), attempts=10):
        self.p, self.scale, self.attempts = p, scale, attempts
        self.log_ratio = (math.log(ratio[0]), math.log(ratio[1]))

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if torch.rand(()) >= self.p:
            return image
        channels, height, width = image.shape
        for _ in range(self.attempts):
            area = height * width * torch.empty(()).uniform_(*self.scale).item()
            aspect = torch.empty(()).uniform_(*self.log_ratio).exp().item()
            h, w = round((area * aspect) ** 0.5), round((area / aspect) ** 0.5)
            if 0 < h < height and 0 < w < width:
                top = int(torch.randint(0, height - h + 1, ()))
                left = int(torch.randint(0, width - w + 1, ()))
                out = image.clone()
                noise = torch.randint(0, 256, (channels, h, w), dtype=torch.uint8)
                out[:, top : top + h, left : left + w] = noise
                return out
        return image


def train_transform(augment: AugmentSection, img_size: int) -> Transform:
    """RandomResizedCrop + horizontal flip (+ RandAugment, random erasing) on uint8;
    normalisation is per batch."""
    steps: list[Transform] = [
        T.RandomResizedCrop(
            img_size, scale=tuple(augment.scale), ratio=tuple(augment.ratio), antialias=True
        ),
    ]
    if augment.hflip > 0:
        steps.append(T.RandomHorizontalFlip(augment.hflip))
    if augment.randaugment:
        steps.append(
            T.RandAugment(
                num_ops=augment.randaugment_num_ops, magnitude=augment.randaugment_magnitude
            )
        )
    if augment.random_erasing > 0:
        steps.append(RandomErasing(augment.random_erasing))
    return T.Compose(steps)


def eval_transform(augment: AugmentSection, img_size: int) -> Transform:
    """Resize the shorter side to img_size / eval_crop_pct, then centre-crop img_size."""
    return T.Compose(
        [
            T.Resize(round(img_size / augment.eval_crop_pct), antialias=True),
            T.CenterCrop(img_size),
        ]
    )


def apply_seeded(transform: Transform, image: torch.Tensor, seed: int) -> torch.Tensor:
    """Run `transform` with torch's CPU generator seeded to `seed`, then restore its state."""
    gen = torch.default_generator
    saved = gen.get_state()
    gen.manual_seed(seed)
    try:
        return transform(image)
    finally:
        gen.set_state(saved)


class Normalize:
    """uint8 image -> float32 (x / 255 - mean) / std, written straight into a batch slot.

    Folded into one multiply-add per element and done per sample while the crop is still in
    cache, which is about twice as fast as converting and normalising the stacked batch.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        mean_t = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.scale = 1.0 / (255.0 * std_t)
        self.bias = -mean_t / std_t
        self._on: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, image: torch.Tensor, out: torch.Tensor) -> None:
        out.copy_(image)
        out.mul_(self.scale).add_(self.bias)

    def batch(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, H, W) -> float32, on the images' device, with the same multiply-add
        (bit-identical to `__call__` per image on the CPU). Loader workers send uint8 batches,
        a quarter of the bytes, and this runs in the trainer, after the copy to the device."""
        if images.device not in self._on:  # a blocking copy, once per device
            self._on[images.device] = (self.scale.to(images.device), self.bias.to(images.device))
        scale, bias = self._on[images.device]
        return images.to(torch.float32).mul_(scale).add_(bias)
