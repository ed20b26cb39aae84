"""One input -> the image bytes a shard stores: decode with checks, convert to RGB, resize,
encode. Pure and deterministic (same input and options -> same bytes), no Ray.

Rejects, each raised as `ImageRejected(reason, detail)`:
  zero_bytes       empty file
  not_an_image     PIL cannot identify the format (a text file named `.jpg`)
  too_many_pixels  width x height from the header exceeds `max_pixels` (checked before decoding;
                   PIL's own decompression-bomb error is caught and reported the same way)
  truncated        the data ends early (PIL raises on `load()`; we never load truncated images)
  undecodable      anything else that fails to decode or convert

Mode conversion (never a reject): I;16 / I scale 0..65535 to 0..255 with rounding; F clips to
0..255; images with transparency (RGBA, LA, PA, P or L/RGB with a transparent colour) are
composited on white; everything else (L, 1, P, CMYK, YCbCr, ...) goes through `convert("RGB")`.
EXIF orientation is not applied: pixels are stored as the file has them.
"""

from __future__ import annotations

import contextlib
import io
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile

from pipelines.data.sources.base import Decoded

IMAGE_FORMATS = ("jpeg", "png", "keep")
_KEEPABLE = {"JPEG": "jpg", "PNG": "png"}
_LOSSY = ("JPEG", "MPO")
_TRUNCATION_LOCK = threading.Lock()


class ImageRejected(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class EncodeOptions:
    image_format: str = "jpeg"
    jpeg_quality: int = 95
    max_size: int | None = None
    max_pixels: int = 89_478_485

    def __post_init__(self) -> None:
        if self.image_format not in IMAGE_FORMATS:
            raise ValueError(f"image_format={self.image_format!r}; allowed: {IMAGE_FORMATS}")

    def describe(self) -> dict:
        return {
            "image_format": self.image_format,
            "jpeg_quality": self.jpeg_quality,
            "max_size": self.max_size,
            "max_pixels": self.max_pixels,
        }


@dataclass(frozen=True)
class PreparedImage:
    ext: str  # "jpg" or "png"
    data: bytes
    original_size: tuple[int, int]  # (width, height) of the input


def target_size(width: int, height: int, max_size: int | None) -> tuple[int, int]:
    """The shorter side shrunk to `max_size`, aspect kept; never enlarged."""
    short = min(width, height)
    if max_size is None or short <= max_size:
        return width, height
    if width <= height:
        return max_size, max(1, round(height * max_size / width))
    return max(1, round(width * max_size / height)), max_size


def prepare_image(item: bytes | Decoded, options: EncodeOptions) -> PreparedImage:
    if isinstance(item, Decoded):
        image = to_rgb(item.image)
        ext = "png" if options.image_format in ("png", "keep") else "jpg"
        return PreparedImage(
            ext, _encode(_resize(image, options), ext, options), item.original_size
        )
    return _prepare_encoded(item, options)


def _prepare_encoded(data: bytes, options: EncodeOptions) -> PreparedImage:
    if not data:
        raise ImageRejected("zero_bytes", "the file is empty")
    with _strict_decoding():
        image = _open(data, options)
        size = image.size
        target = target_size(*size, options.max_size)
        fmt = image.format or ""
        keep = (
            options.image_format == "keep"
            and fmt in _KEEPABLE
            and target == size
            and image.mode == "RGB"
            and "transparency" not in image.info
            and (fmt != "PNG" or _png_bit_depth(data) == 8)
        )
        if fmt == "JPEG" and target != size:
            image.draft("RGB", target)  # let libjpeg decode at 1/2, 1/4, 1/8 scale when it can
        try:
            image.load()
        except Exception as err:
            raise _load_error(err) from None
    if keep:
        return PreparedImage(_KEEPABLE[fmt], data, size)
    try:
        rgb = to_rgb(image)
    except (ValueError, OSError) as err:
        raise ImageRejected(
            "undecodable", f"cannot convert mode {image.mode} to RGB: {err}"
        ) from None
    if options.image_format == "keep":
        ext = "jpg" if fmt in _LOSSY else "png"
    else:
        ext = "jpg" if options.image_format == "jpeg" else "png"
    return PreparedImage(ext, _encode(_resize(rgb, options, target), ext, options), size)


def _open(data: bytes, options: EncodeOptions) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except Image.UnidentifiedImageError:
            raise ImageRejected("not_an_image", "not a format PIL can identify") from None
        except Image.DecompressionBombError as err:
            raise ImageRejected("too_many_pixels", str(err)) from None
        except Exception as err:
            raise _load_error(err) from None
    width, height = image.size
    if width * height > options.max_pixels:
        raise ImageRejected(
            "too_many_pixels",
            f"{width}x{height} = {width * height} pixels > shard.max_pixels={options.max_pixels}",
        )
    if width < 1 or height < 1:
        raise ImageRejected("undecodable", f"size {width}x{height}")
    return image


def _load_error(err: Exception) -> ImageRejected:
    message = f"{type(err).__name__}: {err}"
    if isinstance(err, EOFError) or "truncated" in str(err).lower():
        return ImageRejected("truncated", message)
    if isinstance(err, Image.DecompressionBombError):
        return ImageRejected("too_many_pixels", message)
    return ImageRejected("undecodable", message)


@contextlib.contextmanager
def _strict_decoding() -> Iterator[None]:
    """Decode with `ImageFile.LOAD_TRUNCATED_IMAGES` off, so truncation raises.

    It is off unless someone in this process turned it on; then we turn it off for this
    decode and restore it (deliberately, under a lock: it is a module-level global).
    """
    if not ImageFile.LOAD_TRUNCATED_IMAGES:
        yield
        return
    with _TRUNCATION_LOCK:
        previous = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            yield
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = previous


def _png_bit_depth(data: bytes) -> int:
    return data[24] if len(data) > 24 else 0  # IHDR: 8-byte signature, length, type, w, h, depth


def to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    if mode.startswith("I"):  # I;16, I;16B, I;16L, I;16N, I (32-bit)
        values = np.clip(np.asarray(image).astype(np.int64), 0, 65535)
        grey = ((values * 255 + 32767) // 65535).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if mode == "F":
        grey = np.clip(np.rint(np.asarray(image)), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    return image.convert("RGB")


def _resize(
    image: Image.Image, options: EncodeOptions, target: tuple[int, int] | None = None
) -> Image.Image:
    target = target or target_size(*image.size, options.max_size)
    if image.size == target:
        return image
    return image.resize(target, Image.Resampling.BICUBIC)


def _encode(image: Image.Image, ext: str, options: EncodeOptions) -> bytes:
    out = io.BytesIO()
    if ext == "jpg":
        image.save(out, "JPEG", quality=options.jpeg_quality)
    else:
        image.save(out, "PNG", compress_level=6)
    return out.getvalue()
