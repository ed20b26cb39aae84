"""Characters rendered from the TrueType fonts that ship with matplotlib (DejaVu Sans and Sans
Mono, STIX; nothing is downloaded): labelled images of strokes, made offline.

Each class is one character. An image draws it in a font picked per image among the fonts that
have it, with a random stroke width, then fits it into the frame like a size-normalised scan (the
glyph's height fills 75-100% of the frame, its width at most 95%) with a random aspect, rotation,
shear and offset, blurs it, and adds noise. Ink is bright on black, like the `digits` source. With
`low_res`, the image is area-averaged down to `low_res` pixels and scaled back up to `image_size`
with nearest neighbour: 8 gives the look of scikit-learn's 8x8 digits.

The built-in character set has no digits (nor anything else Unicode counts as a number), and
leaves out characters that look like another one once fitted to the frame (`c k o p s u v w x z`
like their capitals, `l` like `I`, Greek capitals like Latin ones or like their small letters,
`∑ ∏ ß` like `Σ Π β`): pretraining learns strokes, not the downstream digits. Everything follows
from (seed, class, image) and the font files, so the bytes are the same on every run and at any
number of workers (`describe()` hashes the font files, so a matplotlib upgrade that changes them
re-writes the shards).
"""

from __future__ import annotations

import functools
import hashlib
import math
import unicodedata
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from pydantic import Field, model_validator

from pipelines.data.sources.base import Decoded, Item, SampleRef, Source, SourceIndex
from pipelines.errors import DataError
from pipelines.section import MAX_IMG_SIZE, Section, Seed

LATIN_UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
LATIN_LOWER = "abdefghijmnqrty"
GREEK_LOWER = "αβγδεζηθλμξπρστφχψω"
GREEK_UPPER = "ΓΔΛΞΠΣΩ"
SYMBOLS = "&@#$%?!+=<>{}[]/*∞∂∫√§¶£€¥"
DEFAULT_CHARACTERS = LATIN_UPPER + LATIN_LOWER + GREEK_LOWER + GREEK_UPPER + SYMBOLS

# matplotlib's fonts (mpl-data/fonts/ttf): upright sans, mono and serif, regular and bold. Slanted
# and TeX faces (also shipped) made the task much slower to learn at 8x8 for little variety.
FONT_FILES = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
    "STIXGeneral.ttf",
    "STIXGeneralBol.ttf",
)
_FONT_SIZE = 64  # glyphs are drawn this large, then shrunk into the frame
_SUPERSAMPLE = 4  # the frame is drawn at 4x the output size and area-averaged down
_FILL = (0.75, 1.0)  # glyph height as a fraction of the frame
_MAX_WIDTH = 0.95
_ASPECT = (0.7, 1.1)  # horizontal stretch
_ROTATION_DEG = 6.0
_SHEAR = 0.1
_OFFSET = 0.06  # of the frame, each axis
_STROKE = (0, 3)  # extra stroke width in pixels at _FONT_SIZE (0..2)
_BLUR = (0.0, 0.5)  # Gaussian radius in output pixels
_NOISE = (0.0, 0.04)  # Gaussian noise std, fraction of full scale


def is_number(char: str) -> bool:
    """Digits and anything else Unicode counts as a number (superscripts, fractions, ...)."""
    return unicodedata.category(char).startswith("N")


def font_dir() -> Path:
    return Path(str(resources.files("matplotlib") / "mpl-data" / "fonts" / "ttf"))


@functools.lru_cache(maxsize=1)
def font_coverage() -> dict[str, frozenset[str]]:
    """Each available font file (by name) and the characters it draws."""
    from fontTools.ttLib import TTFont

    coverage = {}
    for name in FONT_FILES:
        path = font_dir() / name
        if path.is_file():
            with TTFont(path, lazy=True) as font:
                coverage[name] = frozenset(chr(c) for c in font.getBestCmap())
    if not coverage:
        raise DataError(f"glyphs: none of matplotlib's fonts found in {font_dir()}")
    return coverage


@functools.lru_cache(maxsize=1)
def fonts_fingerprint() -> str:
    digest = hashlib.sha256()
    for name in sorted(font_coverage()):
        digest.update(name.encode() + b"\0" + (font_dir() / name).read_bytes())
    return digest.hexdigest()[:16]


@functools.lru_cache(maxsize=64)
def _font(name: str) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(font_dir() / name), _FONT_SIZE)


def _generator(*entropy: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64([e % 2**63 for e in entropy]))


def _ink(char: str, font_name: str, stroke: int) -> np.ndarray:
    """The glyph's ink as float32 in [0, 1], cropped to its bounding box."""
    font = _font(font_name)
    canvas = Image.new("L", (3 * _FONT_SIZE, 3 * _FONT_SIZE), 0)
    ImageDraw.Draw(canvas).text(
        (_FONT_SIZE // 2, _FONT_SIZE // 2), char, font=font, fill=255,
        stroke_width=stroke, stroke_fill=255,
    )  # fmt: skip
    box = canvas.getbbox()
    if box is None:
        raise DataError(f"glyphs: {font_name} draws {char!r} (U+{ord(char):04X}) without ink")
    return np.asarray(canvas.crop(box), dtype=np.float32) / 255.0


def render(
    char: str,
    fonts: Sequence[str],
    seed: int,
    class_id: int,
    image_id: int,
    image_size: int,
    low_res: int | None = None,
) -> Image.Image:
    """One image of `char` (class `class_id`), drawn in one of `fonts`, as an RGB image."""
    rng = _generator(seed, class_id, image_id + 1)
    font_name = fonts[int(rng.integers(len(fonts)))]
    ink = _ink(char, font_name, int(rng.integers(*_STROKE)))
    frame = (low_res or image_size) * _SUPERSAMPLE
    height, width = ink.shape
    stretch = rng.uniform(*_ASPECT)
    scale = rng.uniform(*_FILL) * frame / height
    scale = min(scale, _MAX_WIDTH * frame / (width * stretch))
    angle = math.radians(rng.uniform(-_ROTATION_DEG, _ROTATION_DEG))
    shear = rng.uniform(-_SHEAR, _SHEAR)
    offset = rng.uniform(-_OFFSET, _OFFSET, size=2) * frame
    # Forward map, glyph pixel (centred) -> frame pixel: rotate @ shear @ diag(stretch, 1) * scale.
    rotate = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    forward = rotate @ np.array([[1.0, shear], [0.0, 1.0]]) @ np.diag([stretch, 1.0]) * scale
    inverse = np.linalg.inv(forward)
    centre_in = np.array([width / 2, height / 2])
    centre_out = np.array([frame / 2, frame / 2]) + offset
    shift = centre_in - inverse @ centre_out  # input = inverse @ output + shift
    coefficients = (*inverse[0], shift[0], *inverse[1], shift[1])
    glyph = Image.fromarray(np.rint(ink * 255).astype(np.uint8))
    drawn = glyph.transform(
        (frame, frame), Image.Transform.AFFINE, coefficients, Image.Resampling.BILINEAR
    )
    radius = rng.uniform(*_BLUR) * _SUPERSAMPLE
    if radius > 0.05:
        drawn = drawn.filter(ImageFilter.GaussianBlur(radius))
    small = np.asarray(drawn.resize((frame // _SUPERSAMPLE,) * 2, Image.Resampling.BOX))
    pixels = small.astype(np.float64) / max(int(small.max()), 1)
    pixels = pixels + rng.normal(0.0, rng.uniform(*_NOISE), size=pixels.shape)
    grey = Image.fromarray(np.rint(np.clip(pixels, 0, 1) * 255).astype(np.uint8))
    if grey.size != (image_size, image_size):
        grey = grey.resize((image_size, image_size), Image.Resampling.NEAREST)
    return grey.convert("RGB")


class GlyphSection(Section):
    kind: Literal["glyphs"]
    num_classes: int = Field(10, ge=1, le=1_000_000, description="the first N characters")
    images_per_class: int = Field(100, ge=1, le=10_000_000)
    image_size: int = Field(64, ge=8, le=MAX_IMG_SIZE, description="rendered size")
    characters: str | None = Field(
        None, description="one class per character; None: the built-in set (no digits)"
    )
    low_res: int | None = Field(
        None,
        ge=4,
        le=MAX_IMG_SIZE,
        description="area-average down to this size, then scale up (nearest)",
    )
    seed: Seed = 0

    @model_validator(mode="after")
    def _check(self) -> GlyphSection:
        characters = self.characters if self.characters is not None else DEFAULT_CHARACTERS
        repeated = sorted({c for c in characters if characters.count(c) > 1})
        if repeated or not characters or any(c.isspace() for c in characters):
            raise ValueError(
                f"shard.source.characters={self.characters!r}: needs distinct, non-space "
                f"characters (repeated: {''.join(repeated)!r})"
            )
        if self.num_classes > len(characters):
            raise ValueError(
                f"shard.source.num_classes={self.num_classes}: the glyphs source has "
                f"{len(characters)} characters; use at most {len(characters)} or add characters"
            )
        if self.low_res is not None and self.low_res > self.image_size:
            raise ValueError(
                f"shard.source.low_res={self.low_res} must be at most "
                f"shard.source.image_size={self.image_size}"
            )
        return self

    def build(self) -> GlyphSource:
        return GlyphSource(
            self.num_classes,
            self.images_per_class,
            self.image_size,
            self.seed,
            self.characters,
            self.low_res,
        )


class GlyphSource(Source):
    kind = "glyphs"

    def __init__(
        self,
        num_classes: int,
        images_per_class: int,
        image_size: int,
        seed: int,
        characters: str | None = None,
        low_res: int | None = None,
    ):
        self.characters = (characters or DEFAULT_CHARACTERS)[:num_classes]
        self.images_per_class = images_per_class
        self.image_size = image_size
        self.seed = seed
        self.low_res = low_res

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "characters": self.characters,
            "images_per_class": self.images_per_class,
            "image_size": self.image_size,
            "low_res": self.low_res,
            "seed": self.seed,
            "fonts": sorted(font_coverage()),
            "fonts_sha256": fonts_fingerprint(),
        }

    def class_fonts(self) -> tuple[tuple[str, ...], ...]:
        """For each class, the fonts that draw its character (at least one, else DataError)."""
        coverage = font_coverage()
        per_class = []
        for char in self.characters:
            fonts = tuple(name for name in FONT_FILES if char in coverage.get(name, ()))
            if not fonts:
                raise DataError(
                    f"shard.source.characters: no font draws {char!r} (U+{ord(char):04X}); "
                    f"fonts: {', '.join(sorted(coverage))}"
                )
            per_class.append(fonts)
        return tuple(per_class)

    def index(self) -> SourceIndex:
        self.class_fonts()  # a character no font draws fails here, on the driver
        refs = tuple(
            SampleRef(f"glyph_c{c:04d}_i{i:06d}", c, f"glyphs:{c}:{i}", locator=(c, i))
            for c in range(len(self.characters))
            for i in range(self.images_per_class)
        )
        classes = tuple(f"U+{ord(ch):04X} {unicodedata.name(ch, '?')}" for ch in self.characters)
        return SourceIndex(classes, refs)

    def load(self, refs: Sequence[SampleRef]) -> Iterator[tuple[SampleRef, Item]]:
        fonts = self.class_fonts()
        size = self.image_size
        for ref in refs:
            class_id, image_id = ref.locator
            image = render(
                self.characters[class_id],
                fonts[class_id],
                self.seed,
                class_id,
                image_id,
                size,
                self.low_res,
            )
            yield ref, Decoded(image, (size, size))
