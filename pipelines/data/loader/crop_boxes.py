"""Crop boxes chosen in the dataloader worker from the image header alone, for decoding on the
accelerator (`data.decode_device: cuda`): the worker never touches the pixels, and the box is a
pure function of (size, seed), so a resumed epoch crops exactly as the uninterrupted one."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from pipelines.config.data import AugmentSection


class CropBox(NamedTuple):
    top: int
    left: int
    height: int
    width: int
    flip: bool

    def as_row(self) -> list[int]:
        return [self.top, self.left, self.height, self.width, int(self.flip)]


def train_box(width: int, height: int, augment: AugmentSection, seed: int) -> CropBox:
    """RandomResizedCrop's box (area in `augment.scale`, log-uniform aspect in `augment.ratio`,
    10 tries, then the largest centred box within the ratio range) plus a horizontal flip."""
    gen = torch.Generator().manual_seed(seed)
    area = width * height
    lo, hi = augment.scale
    log_ratio = (math.log(augment.ratio[0]), math.log(augment.ratio[1]))
    flip = bool(torch.rand((), generator=gen) < augment.hflip)
    for _ in range(10):
        target = area * float(torch.empty(()).uniform_(lo, hi, generator=gen))
        aspect = math.exp(float(torch.empty(()).uniform_(*log_ratio, generator=gen)))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (), generator=gen))
            left = int(torch.randint(0, width - w + 1, (), generator=gen))
            return CropBox(top, left, h, w, flip)
    in_ratio = width / height
    if in_ratio < augment.ratio[0]:
        w, h = width, round(width / augment.ratio[0])
    elif in_ratio > augment.ratio[1]:
        w, h = round(height * augment.ratio[1]), height
    else:
        w, h = width, height
    return CropBox((height - h) // 2, (width - w) // 2, h, w, flip)


def eval_box(width: int, height: int, crop_pct: float) -> CropBox:
    """The centred square that resize-shorter-side-to-(img / crop_pct) + centre-crop keeps."""
    side = max(1, min(round(min(width, height) * crop_pct), width, height))
    return CropBox((height - side) // 2, (width - side) // 2, side, side, False)
