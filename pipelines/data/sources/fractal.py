"""Formula-driven labelled images in the style of FractalDB (Kataoka et al., ACCV 2020).

Each class is an iterated function system (IFS) of 2-4 affine maps `p -> A p + b` with entries
drawn uniformly from [-1, 1] (a seeded stream per class), re-drawn until every map is
contractive (largest singular value <= 0.9) and the attractor fills enough of the canvas. An image
is the attractor rendered by the chaos game, with per-image variation: each IFS parameter scaled
by a factor in [0.9, 1.1], a random colour per map, a random scale and offset inside the canvas,
and (unless `random_orientation` is off) a random flip and quarter turn. Turning that off keeps
every class upright, which matters when the downstream task is orientation-sensitive (digits: a
6 turned is a 9); with it on the model learns orientation invariance. Everything follows from
(seed, class, image), so the bytes are the same on every run.

Shapes: params (N, 6) rows [a, b, c, d, e, f] for x' = a x + b y + e, y' = c x + d y + f.
The chaos game runs walkers in lock-step (vectorised over walkers). Every walker starts at the
fixed point of one map, which lies on the attractor, so every point it visits does too: no
burn-in is needed. The walkers double in number each step until there are W of them (so early
steps do not repeat the same few points), then each step adds W points.
"""

from __future__ import annotations

import colorsys
import functools
import math
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import numpy as np
from PIL import Image
from pydantic import Field

from pipelines.data.sources.base import Decoded, Item, SampleRef, Source, SourceIndex
from pipelines.errors import DataError
from pipelines.section import MAX_IMG_SIZE, Section, Seed

MAX_SINGULAR_VALUE = 0.9
MIN_FILL = 0.08  # fraction of a 32x32 canvas the class attractor must cover
_FILL_SIZE = 32
_FILL_POINTS = 4_000
_MAX_DRAWS = 10_000
_WALKERS = 1024
_START_WALKERS = 32
_VARIATION = 0.1


def _generator(*entropy: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64([e % 2**63 for e in entropy]))


def _max_singular_values(params: np.ndarray) -> np.ndarray:
    a = params[:, :4].reshape(-1, 2, 2)
    return np.linalg.svd(a, compute_uv=False)[:, 0]


def _probabilities(params: np.ndarray) -> np.ndarray:
    det = np.abs(params[:, 0] * params[:, 3] - params[:, 1] * params[:, 2]) + 1e-3
    return det / det.sum()


def chaos_game(
    params: np.ndarray, num_points: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, y, map index) of about `num_points` points on the attractor of `params`."""
    n = len(params)
    a = params[:, :4].reshape(n, 2, 2)
    fixed = np.linalg.solve(np.eye(2) - a, params[:, 4:6][..., None])[..., 0]  # (N, 2)
    cumulative = np.cumsum(_probabilities(params))[:-1]
    coef = params.T.copy()  # (6, N)
    walkers = _START_WALKERS
    while walkers * 2 <= min(_WALKERS, num_points // 4):
        walkers *= 2
    sizes = []
    size = _START_WALKERS
    while size < walkers:  # growth: walkers double each step, so early points are not repeats
        sizes.append(size)
        size *= 2
    remaining = max(num_points - sum(sizes), 0)
    sizes += [walkers] * math.ceil(remaining / walkers)
    start = fixed[rng.integers(n, size=sizes[0])]
    x, y = start[:, 0], start[:, 1]
    uniforms = rng.random(sum(sizes))
    xs, ys, maps = [], [], []
    offset = 0
    for size in sizes:
        if len(x) < size:
            x, y = np.repeat(x, size // len(x)), np.repeat(y, size // len(y))
        choice = np.searchsorted(cumulative, uniforms[offset : offset + size], side="right")
        offset += size
        c = coef[:, choice]
        x, y = c[0] * x + c[1] * y + c[4], c[2] * x + c[3] * y + c[5]
        xs.append(x)
        ys.append(y)
        maps.append(choice)
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(maps)


def _pixel_counts(
    x: np.ndarray, y: np.ndarray, maps: np.ndarray, n: int, size: int, scale: float, shift
) -> np.ndarray:
    """Per-map hit counts (N, size, size) of the points fitted into the canvas."""
    xmin, xmax, ymin, ymax = x.min(), x.max(), y.min(), y.max()
    extent = max(xmax - xmin, ymax - ymin, 1e-9)
    s = scale * (size - 1) / extent
    px = (x - (xmin + xmax) / 2) * s + (size - 1) / 2 + shift[0]
    py = (y - (ymin + ymax) / 2) * s + (size - 1) / 2 + shift[1]
    ix = np.clip(np.rint(px).astype(np.int64), 0, size - 1)
    iy = np.clip(np.rint(py).astype(np.int64), 0, size - 1)
    flat = (maps * size + iy) * size + ix
    return np.bincount(flat, minlength=n * size * size).reshape(n, size, size)


def fill_rate(params: np.ndarray, rng: np.random.Generator) -> float:
    x, y, maps = chaos_game(params, _FILL_POINTS, rng)
    counts = _pixel_counts(x, y, maps, len(params), _FILL_SIZE, 1.0, (0.0, 0.0))
    return float((counts.sum(0) > 0).mean())


@functools.lru_cache(maxsize=4096)
def class_params(seed: int, class_id: int) -> np.ndarray:
    """The IFS of one class: contractive maps whose attractor covers enough of the canvas."""
    rng = _generator(seed, class_id, 0)
    for _ in range(_MAX_DRAWS):
        n = int(rng.integers(2, 5))
        params = rng.uniform(-1.0, 1.0, size=(n, 6))
        if _max_singular_values(params).max() > MAX_SINGULAR_VALUE:
            continue
        if fill_rate(params, rng) >= MIN_FILL:
            params.setflags(write=False)
            return params
    raise DataError(f"fractal class {class_id}: no usable IFS after {_MAX_DRAWS} draws")


def render(
    seed: int,
    class_id: int,
    image_id: int,
    size: int,
    num_points: int,
    random_orientation: bool = True,
) -> Image.Image:
    """One image of one class: the class IFS, varied per image, as an RGB image."""
    rng = _generator(seed, class_id, image_id + 1)
    base = class_params(seed, class_id)
    n = len(base)
    params = base * rng.uniform(1 - _VARIATION, 1 + _VARIATION, size=base.shape)
    sigma = _max_singular_values(params)
    shrink = np.where(sigma > 0.99, 0.99 / sigma, 1.0)  # keep every map contractive
    params[:, :4] *= shrink[:, None]
    x, y, maps = chaos_game(params, num_points, rng)
    scale = rng.uniform(0.7, 1.0)
    shift = rng.uniform(-1, 1, size=2) * (1 - scale) * (size - 1) / 2
    counts = _pixel_counts(x, y, maps, n, size, scale, shift).reshape(n, -1)
    hue = rng.uniform()
    colours = np.array(
        [
            colorsys.hsv_to_rgb((hue + i * rng.uniform(0.1, 0.4)) % 1.0, rng.uniform(0.5, 1), 1)
            for i in range(n)
        ]
    )  # (N, 3)
    total = counts.sum(0)
    mix = (counts.T @ colours) / np.maximum(total, 1)[:, None]
    tau = 0.5 * total.sum() / max(np.count_nonzero(total), 1)
    value = mix * (1 - np.exp(-total / tau))[:, None]
    pixels = np.rint(value * 255).astype(np.uint8).reshape(size, size, 3)
    if random_orientation:  # the last draws: turning it off changes nothing else
        pixels = np.rot90(pixels, k=int(rng.integers(4)))
        if rng.uniform() < 0.5:
            pixels = pixels[:, ::-1]
    return Image.fromarray(np.ascontiguousarray(pixels))


class FractalSection(Section):
    kind: Literal["fractal"]
    num_classes: int = Field(10, ge=1, le=1_000_000)
    images_per_class: int = Field(100, ge=1, le=10_000_000)
    image_size: int = Field(64, ge=8, le=MAX_IMG_SIZE, description="rendered size")
    num_points: int = Field(
        20_000, ge=100, le=100_000_000, description="chaos-game points per image"
    )
    random_orientation: bool = Field(True, description="a random flip and quarter turn per image")
    seed: Seed = 0

    def build(self) -> FractalSource:
        return FractalSource(
            self.num_classes,
            self.images_per_class,
            self.image_size,
            self.num_points,
            self.seed,
            self.random_orientation,
        )


class FractalSource(Source):
    kind = "fractal"

    def __init__(
        self,
        num_classes: int,
        images_per_class: int,
        image_size: int,
        num_points: int,
        seed: int,
        random_orientation: bool = True,
    ):
        self.num_classes = num_classes
        self.images_per_class = images_per_class
        self.image_size = image_size
        self.num_points = num_points
        self.seed = seed
        self.random_orientation = random_orientation

    def describe(self) -> dict[str, Any]:
        fixed = {} if self.random_orientation else {"random_orientation": False}
        return {
            "kind": self.kind,
            "num_classes": self.num_classes,
            "images_per_class": self.images_per_class,
            "image_size": self.image_size,
            "num_points": self.num_points,
            "seed": self.seed,
        } | fixed

    def index(self) -> SourceIndex:
        refs = tuple(
            SampleRef(f"fractal_c{c:04d}_i{i:06d}", c, f"fractal:{c}:{i}", locator=(c, i))
            for c in range(self.num_classes)
            for i in range(self.images_per_class)
        )
        classes = tuple(f"fractal_{c:04d}" for c in range(self.num_classes))
        return SourceIndex(classes, refs)

    def load(self, refs: Sequence[SampleRef]) -> Iterator[tuple[SampleRef, Item]]:
        size = self.image_size
        for ref in refs:
            class_id, image_id = ref.locator
            image = render(
                self.seed, class_id, image_id, size, self.num_points, self.random_orientation
            )
            yield ref, Decoded(image, (size, size))
