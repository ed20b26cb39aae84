"""An evaluation report: per-class accuracy (JSON) and a confusion-matrix heatmap (PNG).

Drawn with Pillow alone. The heatmap's colours are row-normalised (the fraction of each true
class predicted as each class), so rare and common classes read alike; the raw counts are written
in the cells when there are at most 20 classes, class names label the axes up to 50 classes and
class indices (every n-th) beyond.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from pipelines.evaluation.evaluate import EvalResult

REPORT_JSON = "eval_report.json"
CONFUSION_PNG = "confusion_matrix.png"
MAX_NAMED_CLASSES = 50
MAX_COUNTED_CLASSES = 20
_MAX_LABEL_CHARS = 24
# "Blues": white for 0, dark blue for 1
_STOPS = np.array(
    [[247, 251, 255], [198, 219, 239], [107, 174, 214], [33, 113, 181], [8, 48, 107]],
    dtype=np.float64,
)
_INK = (20, 20, 20)


def per_class_table(result: EvalResult, classes: Sequence[str] | None) -> list[dict[str, Any]]:
    """One row per class: index, class (name), support (true count), correct, accuracy.

    `accuracy` is None for a class with no example (undefined, not 0). `classes` None labels
    classes by index.
    """
    confusion = _confusion(result.confusion)
    names = _class_names(classes, confusion.shape[0])
    support = confusion.sum(axis=1)
    correct = np.diag(confusion)
    return [
        {
            "index": i,
            "class": names[i],
            "support": int(support[i]),
            "correct": int(correct[i]),
            "accuracy": float(correct[i] / support[i]) if support[i] else None,
        }
        for i in range(len(names))
    ]


def write_report(
    result: EvalResult, classes: Sequence[str] | None, out_dir: Path
) -> dict[str, Path]:
    """Write `eval_report.json` and `confusion_matrix.png` into `out_dir` (created if needed).

    Returns `{"eval_report": json_path, "confusion_matrix": png_path}`. The JSON holds top1, top5,
    loss (null when not finite), count, num_classes and `per_class` (see `per_class_table`).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = per_class_table(result, classes)
    report = {
        "top1": _finite_or_none(result.top1),
        "top5": _finite_or_none(result.top5),
        "loss": _finite_or_none(result.loss),
        "count": int(result.count),
        "num_classes": len(table),
        "per_class": table,
    }
    json_path = out_dir / REPORT_JSON
    json_path.write_text(json.dumps(report, indent=1, allow_nan=False) + "\n")
    png_path = confusion_png(
        result.confusion, [row["class"] for row in table], out_dir / CONFUSION_PNG
    )
    return {"eval_report": json_path, "confusion_matrix": png_path}


def confusion_png(
    confusion: torch.Tensor | np.ndarray, classes: Sequence[str] | None, path: Path
) -> Path:
    """Render the (true, predicted) count matrix as a heatmap PNG at `path`; returns `path`."""
    counts = _confusion(confusion)
    num = counts.shape[0]
    names = _class_names(classes, num)
    cell = (
        40
        if num <= MAX_COUNTED_CLASSES
        else 18
        if num <= MAX_NAMED_CLASSES
        else max(1, min(12, 1200 // num))
    )
    font = _font(12)
    small = _font(10)
    if num <= MAX_NAMED_CLASSES:
        ticks = [(i, _shorten(names[i])) for i in range(num)]
    else:
        step = _tick_step(num)
        ticks = [(i, str(i)) for i in range(0, num, step)]
    label_w = max(_text_size(font, text)[0] for _, text in ticks) if ticks else 0
    line_h = _text_size(font, "Ag")[1]
    pad = 8
    grid = cell * num
    left = pad + line_h + pad + label_w + pad  # axis title, tick labels
    top = pad + line_h + pad  # title
    bar_w = 14
    right = pad * 2 + bar_w + pad + _text_size(small, "1.0")[0] + pad
    bottom = pad + label_w + pad + line_h + pad  # rotated tick labels, axis title
    width, height = left + grid + right, top + grid + bottom
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)

    totals = counts.sum(axis=1, keepdims=True)
    fractions = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    heat = Image.fromarray(_colours(fractions), "RGB").resize((grid, grid), Image.NEAREST)
    image.paste(heat, (left, top))
    draw.rectangle([left - 1, top - 1, left + grid, top + grid], outline=(160, 160, 160))

    title = f"confusion matrix, rows normalised ({num} classes, {int(counts.sum())} samples)"
    draw.text((left, pad), title, fill=_INK, font=font)
    for i, text in ticks:
        centre = top + i * cell + cell // 2
        tw, th = _text_size(font, text)
        draw.text((left - pad - tw, centre - th // 2 - 2), text, fill=_INK, font=font)
        x_centre = left + i * cell + cell // 2
        _vertical_text(image, text, font, (x_centre - th // 2 - 2, top + grid + pad))
        if num > MAX_NAMED_CLASSES:  # tick marks: the labels do not sit on every cell
            draw.line([left - 3, centre, left - 1, centre], fill=_INK)
            draw.line([x_centre, top + grid, x_centre, top + grid + 3], fill=_INK)
    draw.text(
        (left + grid // 2 - _text_size(font, "predicted")[0] // 2, height - pad - line_h - 2),
        "predicted",
        fill=_INK,
        font=font,
    )
    true_w = _text_size(font, "true")[0]
    _vertical_text(image, "true", font, (pad, top + grid // 2 - true_w // 2))

    if num <= MAX_COUNTED_CLASSES:
        for r in range(num):
            for c in range(num):
                if counts[r, c] == 0:
                    continue
                text = _count_text(int(counts[r, c]))
                tw, th = _text_size(small, text)
                ink = "white" if fractions[r, c] > 0.55 else _INK
                xy = (left + c * cell + (cell - tw) // 2, top + r * cell + (cell - th) // 2 - 2)
                draw.text(xy, text, fill=ink, font=small)

    bar_left = left + grid + 2 * pad
    ramp = np.linspace(1.0, 0.0, max(grid, 2))[:, None].repeat(bar_w, axis=1)
    image.paste(Image.fromarray(_colours(ramp), "RGB"), (bar_left, top))
    draw.rectangle(
        [bar_left - 1, top - 1, bar_left + bar_w, top + max(grid, 2)], outline=(160, 160, 160)
    )
    draw.text((bar_left + bar_w + pad // 2, top - 2), "1.0", fill=_INK, font=small)
    zero_h = _text_size(small, "0")[1]
    draw.text((bar_left + bar_w + pad // 2, top + grid - zero_h - 2), "0", fill=_INK, font=small)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG", optimize=True)
    return path


def _confusion(confusion: torch.Tensor | np.ndarray | None) -> np.ndarray:
    if confusion is None:
        raise ValueError(
            "the EvalResult has no confusion matrix; evaluate with confusion=True for a report"
        )
    matrix = np.asarray(confusion.cpu() if isinstance(confusion, torch.Tensor) else confusion)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] == 0:
        raise ValueError(f"a confusion matrix must be square (C, C), got {matrix.shape}")
    return matrix.astype(np.int64)


def _class_names(classes: Sequence[str] | None, num: int) -> list[str]:
    if classes is None:
        return [str(i) for i in range(num)]
    if len(classes) != num:
        raise ValueError(f"{len(classes)} class names for a {num} x {num} confusion matrix")
    return [str(name) for name in classes]


def _finite_or_none(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _colours(fractions: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> uint8 RGB through the colour stops."""
    pos = np.clip(fractions, 0.0, 1.0) * (len(_STOPS) - 1)
    low = np.minimum(pos.astype(np.int64), len(_STOPS) - 2)
    frac = (pos - low)[..., None]
    return np.round(_STOPS[low] * (1 - frac) + _STOPS[low + 1] * frac).astype(np.uint8)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _text_size(font, text: str) -> tuple[int, int]:
    left, top, right, bottom = font.getbbox(text)
    return int(right - left), int(bottom)


def _vertical_text(image: Image.Image, text: str, font, xy: tuple[int, int]) -> None:
    """Draw `text` rotated 90 degrees (reading bottom to top), its box's top-left corner at `xy`."""
    w, h = _text_size(font, text)
    if w == 0:
        return
    mask = Image.new("L", (w + 2, h + 4), 0)
    ImageDraw.Draw(mask).text((0, 0), text, fill=255, font=font)
    mask = mask.rotate(90, expand=True)
    image.paste(Image.new("RGB", mask.size, _INK), xy, mask)


def _shorten(name: str) -> str:
    return name if len(name) <= _MAX_LABEL_CHARS else name[: _MAX_LABEL_CHARS - 1] + "…"


def _tick_step(num: int) -> int:
    for step in (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 5000):
        if num / step <= 20:
            return step
    return math.ceil(num / 20)


def _count_text(n: int) -> str:
    if n < 10_000:
        return str(n)
    if n < 1_000_000:
        return f"{n // 1000}k"
    return f"{n / 1e6:.1f}M"
