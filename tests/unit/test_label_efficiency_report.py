"""The label-efficiency report: means, gains, the table and the PNG, on synthetic points."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipelines.evaluation.transfer import group, transfer_report


def _points() -> list[dict]:
    top1 = {
        ("pretrained", 5): [0.80, 0.84, 0.82],
        ("scratch", 5): [0.60, 0.70, 0.65],
        ("pretrained", 20): [0.92, 0.93, 0.94],
        ("scratch", 20): [0.88, 0.90, 0.89],
        ("pretrained", "all"): [0.98],
        ("scratch", "all"): [0.97],
    }
    return [
        {"k": k, "seed": seed, "init": init, "val_top1": value}
        for (init, k), values in top1.items()
        for seed, value in enumerate(values)
    ]


def test_means_gains_and_table(tmp_path):
    report = transfer_report(list(reversed(_points())), tmp_path / "transfer.png")
    assert list(report.means) == ["pretrained", "scratch"]
    assert list(report.means["scratch"]) == ["5", "20", "all"]
    assert report.means["pretrained"]["5"] == pytest.approx(0.82)
    assert report.means["scratch"]["5"] == pytest.approx(0.65)
    assert report.gain["5"] == pytest.approx(0.17)
    assert report.gain["20"] == pytest.approx(0.04)
    assert report.gain["all"] == pytest.approx(0.01)
    lines = report.table.splitlines()
    assert lines[0].split() == ["labelled/class", "pretrained", "scratch", "gain"]
    assert lines[2].split()[0] == "5" and lines[2].endswith("+17.00")
    assert "82.00% +- 2.00 (n=3)" in lines[2] and "65.00% +- 5.00 (n=3)" in lines[2]
    assert lines[4].startswith("all") and "(n=1)" in lines[4]


def test_plot_is_a_readable_png(tmp_path):
    report = transfer_report(_points(), tmp_path / "out" / "transfer.png", all_per_class=143.8)
    assert report.plot == tmp_path / "out" / "transfer.png"
    with Image.open(report.plot) as image:
        assert image.format == "PNG" and image.size == (640, 440)
        pixels = np.asarray(image.convert("RGB"))
    # both curves are drawn in their colours (tab:blue and tab:orange)
    for colour in ((31, 119, 180), (255, 127, 14)):
        assert (np.abs(pixels.astype(int) - colour).sum(axis=2) < 30).sum() > 50


def test_grouping_orders_seeds_and_rejects_bad_k():
    grouped = group(
        [
            {"k": 5, "seed": 2, "init": "scratch", "val_top1": 0.3},
            {"k": 5, "seed": 0, "init": "scratch", "val_top1": 0.1},
            {"k": 5, "seed": 1, "init": "scratch", "val_top1": 0.2},
        ]
    )
    assert grouped == {"scratch": {"5": [0.1, 0.2, 0.3]}}
    report = transfer_report([{"k": 5, "seed": 0, "init": "scratch", "val_top1": 0.5}])
    assert report.gain == {} and report.plot is None and "gain" not in report.table
    with pytest.raises(ValueError, match="k=0"):
        group([{"k": 0, "seed": 0, "init": "scratch", "val_top1": 0.5}])
