"""Evaluation report: per-class table, confusion-matrix PNG (Pillow only), JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.evaluation import confusion_png, per_class_table, write_report
from pipelines.evaluation.evaluate import EvalResult

# rows: true class, columns: predicted class
HAND_MADE = torch.tensor([[5, 1, 0], [2, 2, 0], [0, 0, 0]])


def result(confusion: torch.Tensor, loss: float = 0.7) -> EvalResult:
    count = int(confusion.sum())
    top1 = float(confusion.diag().sum()) / max(count, 1)
    return EvalResult(top1, 1.0, loss, count, confusion)


def test_per_class_table_from_a_hand_made_matrix() -> None:
    rows = per_class_table(result(HAND_MADE), ["cat", "dog", "eel"])
    assert rows == [
        {"index": 0, "class": "cat", "support": 6, "correct": 5, "accuracy": 5 / 6},
        {"index": 1, "class": "dog", "support": 4, "correct": 2, "accuracy": 0.5},
        {"index": 2, "class": "eel", "support": 0, "correct": 0, "accuracy": None},
    ]
    assert [r["class"] for r in per_class_table(result(HAND_MADE), None)] == ["0", "1", "2"]


def test_write_report(tmp_path: Path) -> None:
    paths = write_report(
        result(HAND_MADE, loss=float("nan")), ["cat", "dog", "eel"], tmp_path / "eval"
    )
    assert paths == {
        "eval_report": tmp_path / "eval" / "eval_report.json",
        "confusion_matrix": tmp_path / "eval" / "confusion_matrix.png",
    }
    report = json.loads(paths["eval_report"].read_text())
    assert report["top1"] == pytest.approx(0.7)
    assert report["top5"] == 1.0
    assert report["loss"] is None  # NaN is not JSON
    assert report["count"] == 10 and report["num_classes"] == 3
    assert report["per_class"][1] == {
        "index": 1,
        "class": "dog",
        "support": 4,
        "correct": 2,
        "accuracy": 0.5,
    }
    with Image.open(paths["confusion_matrix"]) as image:
        assert image.format == "PNG" and image.mode == "RGB"
        width, height = image.size
        assert 3 * 40 < width < 1000 and 3 * 40 < height < 1000


@pytest.mark.parametrize("num_classes", [4, 30, 120])  # counts; names; indices
def test_confusion_png_sizes_and_colours(tmp_path: Path, num_classes: int) -> None:
    confusion = torch.eye(num_classes, dtype=torch.long) * 50
    confusion[0, 1] = 50  # class 0: half right
    names = [f"class number {i} with a rather long name" for i in range(num_classes)]
    path = confusion_png(confusion, names, tmp_path / "cm.png")
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3).astype(int)
        width, height = image.size
    assert 100 < width < 2000 and 100 < height < 2000
    # a perfect row is the darkest colour (8, 48, 107), a half row the middle one (107, 174, 214)
    dark = np.abs(pixels - [8, 48, 107]).sum(axis=1) <= 3
    middle = np.abs(pixels - [107, 174, 214]).sum(axis=1) <= 3
    assert dark.sum() > 0 and middle.sum() > 0


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="confusion=True"):
        write_report(EvalResult(0.5, 0.9, 1.0, 10, None), ["a"], tmp_path)
    with pytest.raises(ValueError, match="2 class names"):
        per_class_table(result(HAND_MADE), ["a", "b"])
    with pytest.raises(ValueError, match="square"):
        confusion_png(torch.zeros(2, 3, dtype=torch.long), None, tmp_path / "x.png")
