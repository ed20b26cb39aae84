"""scikit-learn's bundled handwritten digits (`load_digits`: 1,797 real 8x8 images, 10 classes;
no download). The 17 grey levels 0..16 map to 0..255, and images are upscaled losslessly
(nearest neighbour) to `image_size` and stored as RGB.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import numpy as np
from PIL import Image
from pydantic import Field

from pipelines.data.sources.base import (
    Decoded,
    Item,
    SampleRef,
    Source,
    SourceIndex,
    label_names,
)
from pipelines.section import MAX_IMG_SIZE, Section


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    images = np.rint(data.images * (255.0 / 16.0)).astype(np.uint8)
    return images, data.target.astype(np.int64)


class DigitsSection(Section):
    kind: Literal["digits"]
    image_size: int = Field(
        64, ge=8, le=MAX_IMG_SIZE, description="8x8 scaled up (nearest) to this"
    )

    def build(self) -> DigitsSource:
        return DigitsSource(self.image_size)


class DigitsSource(Source):
    kind = "digits"

    def __init__(self, image_size: int):
        self.image_size = image_size

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "image_size": self.image_size}

    def index(self) -> SourceIndex:
        _, targets = _digits()
        refs = tuple(
            SampleRef(f"digits_{i:04d}", int(label), f"digits:{i}", locator=i)
            for i, label in enumerate(targets)
        )
        return SourceIndex(label_names(10), refs)

    def load(self, refs: Sequence[SampleRef]) -> Iterator[tuple[SampleRef, Item]]:
        images, _ = _digits()
        for ref in refs:
            grey = Image.fromarray(images[ref.locator])
            size = (self.image_size, self.image_size)
            rgb = grey.resize(size, Image.Resampling.NEAREST).convert("RGB")
            yield ref, Decoded(rgb, grey.size)
