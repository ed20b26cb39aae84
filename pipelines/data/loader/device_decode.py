"""Batched JPEG decode plus crop, resize, flip and normalise on the accelerator.

With `data.decode_device: cuda` the dataloader workers only read, validate headers and choose
crop boxes (`crop_boxes`); the training process hands each batch's encoded images to nvJPEG in
one `decode_jpeg` call, then crops and resizes each image with `roi_align` (bilinear, averaging
~1 sample per source pixel when shrinking, i.e. antialiased) on just its box plus a one-pixel
margin: memory per image is bounded by that image, never by the batch's largest, and at an
image's own right/bottom edge bilinear sampling repeats the edge pixel (as at the left/top)
instead of blending in padding. Labels go to the device with the images, non-blocking; nothing
here waits for the device (nvJPEG itself blocks the calling thread until its own stream is done,
which is why `device_prefetch` runs this in its staging thread). The CPU workers then keep up
with a GPU they could not feed by decoding. Works on any device (the tests run it on the CPU).
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
        boxes: torch.Tensor = batch.pop("box")  # stays on the host: read as Python ints
        valid = batch["valid"].clone()
        images = self._decode(encoded, valid)
        if self.train and not valid.all() and valid.any():
            self._refill(images, boxes, batch, valid)
        batch["image"] = self._crop_resize(images, boxes, valid)
        batch["valid"] = valid
        for key in ("label", "valid"):
            batch[key] = self._to_device(batch[key])
        return batch

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        """Non-blocking: from pinned memory a CUDA copy does not wait for the device."""
        if self.device.type == "cuda" and not tensor.is_pinned():
            tensor = tensor.pin_memory()
        return tensor.to(self.device, non_blocking=True)

    def _refill(self, images, boxes, batch, valid: torch.Tensor) -> None:
        """Training never sees a blank: a slot that failed here takes the next good slot's
        image, box and label (the workers refill the slots they can judge themselves)."""
        good = valid.nonzero().flatten().tolist()
        for i in (~valid).nonzero().flatten().tolist():
            j = next((g for g in good if g > i), good[0])
            images[i], boxes[i] = images[j], boxes[j]
            batch["label"][i] = batch["label"][j]
            for listed in ("key", "source"):
                if listed in batch:
                    batch[listed][i] = batch[listed][j]
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
                return self._to_device(decode_image(data, ImageReadMode.RGB))  # PNG, WebP: CPU
        except RuntimeError as err:
            valid[index] = False
            self.failed += 1
            if self.failed & (self.failed - 1) == 0:
                logger.warning("could not decode an image on %s: %s", self.device, err)
            return None

    def _crop_resize(
        self, images: list[torch.Tensor], boxes: torch.Tensor, valid: torch.Tensor
    ) -> torch.Tensor:
        """Each image's box (top, left, height, width, flip) -> (B, 3, S, S) normalised; a slot
        that is not valid is zero before normalising, as the CPU path's blank image."""
        size = self.img_size
        rows, regions = [], []
        for image, (top, left, h, w, _) in zip(images, boxes.tolist(), strict=True):
            # The box plus a one-pixel margin where the image has one: bilinear samples near
            # the box edge read their real neighbours; at the image edge roi_align clamps.
            y0, x0 = max(top - 1, 0), max(left - 1, 0)
            y1, x1 = min(top + h + 1, image.shape[1]), min(left + w + 1, image.shape[2])
            regions.append(image[:, y0:y1, x0:x1])
            # (batch index, x1, y1, x2, y2) in pixel-edge coordinates of the region
            rows.append([0.0, left - x0, top - y0, left - x0 + w, top - y0 + h])
        rois = self._to_device(torch.tensor(rows, dtype=torch.float32))
        out = torch.zeros(len(images), 3, size, size, device=self.device)
        for i, (region, keep, flip) in enumerate(
            zip(regions, valid.tolist(), boxes[:, 4].tolist(), strict=True)
        ):
            if not keep:
                continue
            crop = roi_align(
                region.unsqueeze(0).float(),
                rois[i : i + 1],
                (size, size),
                spatial_scale=1.0,
                sampling_ratio=-1,
                aligned=True,
            )[0]
            out[i].copy_(crop.flip(-1) if flip else crop)
        return out.mul_(self.scale).add_(self.bias)
