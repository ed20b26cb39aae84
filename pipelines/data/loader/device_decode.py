"""Batched JPEG decode plus crop, resize, flip and normalise on the accelerator.

With `data.decode_device: cuda` the dataloader workers only read, validate headers and choose
crop boxes (`crop_boxes`); the training process hands each batch's encoded images to nvJPEG in
one `decode_jpeg` call and crops and resizes the whole batch in one `roi_align` (bilinear,
averaging ~1 sample per source pixel when shrinking, i.e. antialiased). The CPU workers then
keep up with a GPU they could not feed by decoding. Works on any device (the tests run it on
the CPU).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torchvision.io import ImageReadMode, decode_image, decode_jpeg
from torchvision.ops import roi_align

logger = logging.getLogger(__name__)
JPEG_MAGIC = b"\xff\xd8"


class DeviceDecoder:
    """Turns a worker batch of encoded images + boxes into the usual normalised float batch."""

    def __init__(
        self,
        device: torch.device,
        img_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        train: bool,
    ):
        self.device = device
        self.img_size = img_size
        self.train = train
        mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.scale = 1.0 / (255.0 * std_t)
        self.bias = -mean_t / std_t
        self.failed = 0  # images the worker accepted but the decoder could not read

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        encoded: list[torch.Tensor] = batch.pop("encoded")
        boxes: torch.Tensor = batch.pop("box")
        valid = batch["valid"].clone()
        images = self._decode(encoded, valid)
        if self.train and not valid.all() and valid.any():
            self._refill(images, boxes, batch, valid)
        batch["image"] = self._crop_resize(images, boxes, valid)
        batch["valid"] = valid
        return batch

    def _refill(self, images, boxes, batch, valid: torch.Tensor) -> None:
        """Training never sees a blank: a slot that failed here takes the next good slot's
        image, box and label (the workers refill the slots they can judge themselves)."""
        good = valid.nonzero().flatten().tolist()
        for i in (~valid).nonzero().flatten().tolist():
            j = next((g for g in good if g > i), good[0])
            images[i], boxes[i] = images[j], boxes[j]
            batch["label"][i] = batch["label"][j]
            if "key" in batch:
                batch["key"][i] = batch["key"][j]
            valid[i] = True

    def _decode(self, encoded: list[torch.Tensor], valid: torch.Tensor) -> list[torch.Tensor]:
        """uint8 (3, h, w) images on the device; a slot that cannot be decoded becomes a 1x1
        black image, is marked invalid and counted."""
        out: list[torch.Tensor | None] = [None] * len(encoded)
        jpegs = [i for i, data in enumerate(encoded) if bytes(data[:2].tolist()) == JPEG_MAGIC]
        if jpegs:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)
                    decoded = decode_jpeg(
                        [encoded[i] for i in jpegs], mode=ImageReadMode.RGB, device=self.device
                    )
                for i, image in zip(jpegs, decoded, strict=True):
                    out[i] = image
            except RuntimeError:  # one bad stream fails the whole call: find it one by one
                pass
        for i, data in enumerate(encoded):
            if out[i] is None and data.numel():
                out[i] = self._decode_one(data, i, valid)
        blank = torch.zeros(3, 1, 1, dtype=torch.uint8, device=self.device)
        return [image if image is not None else blank for image in out]

    def _decode_one(self, data: torch.Tensor, index: int, valid: torch.Tensor):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                if bytes(data[:2].tolist()) == JPEG_MAGIC:
                    return decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device)
                return decode_image(data, ImageReadMode.RGB).to(self.device)  # PNG, WebP: CPU
        except RuntimeError as err:
            valid[index] = False
            self.failed += 1
            if self.failed & (self.failed - 1) == 0:
                logger.warning("could not decode an image on %s: %s", self.device, err)
            return None

    def _crop_resize(
        self, images: list[torch.Tensor], boxes: torch.Tensor, valid: torch.Tensor
    ) -> torch.Tensor:
        height = max(image.shape[1] for image in images)
        width = max(image.shape[2] for image in images)
        canvas = torch.zeros(len(images), 3, height, width, device=self.device)
        for slot, image in zip(canvas, images, strict=True):
            slot[:, : image.shape[1], : image.shape[2]].copy_(image)
        boxes = boxes.to(self.device)
        top, left, h, w, flip = boxes.unbind(1)
        keep = valid.to(self.device)
        # A box (x1, y1, x2, y2) in pixel-edge coordinates; invalid slots sample nothing useful
        # and are zeroed below, as the CPU path blanks them.
        rois = torch.stack(
            [
                torch.arange(len(images), device=self.device, dtype=torch.float32),
                left.float(),
                top.float(),
                (left + w).float(),
                (top + h).float(),
            ],
            dim=1,
        )
        size = (self.img_size, self.img_size)
        out = roi_align(canvas, rois, size, spatial_scale=1.0, sampling_ratio=-1, aligned=True)
        out = torch.where(flip.view(-1, 1, 1, 1).bool(), out.flip(-1), out)
        out = out * keep.view(-1, 1, 1, 1)
        return out.mul_(self.scale).add_(self.bias)
