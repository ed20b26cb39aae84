"""The label-efficiency curve: downstream top-1 against labelled images per class, fine-tuned
from the pretrained checkpoint and from random initialisation, over a few fine-tune seeds.

    report = transfer_report(points, "runs/demo/transfer.png", all_per_class=143.8)
    print(report.table)              # the terminal table
    summary["transfer"] = points; summary["transfer_means"] = report.means

A point is `{"k": 5 | 20 | "all", "seed": 0, "init": "pretrained" | "scratch", "val_top1": 0.83}`
(`k`: labelled training images per class; "all": the whole train split). The plot shows each
init's mean with bars from the lowest to the highest seed (the spread), and every seed as a dot.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ALL = "all"
INIT_ORDER = ("pretrained", "scratch")
_STYLE = {"pretrained": ("tab:blue", "o"), "scratch": ("tab:orange", "s")}


@dataclass(frozen=True)
class TransferReport:
    """`means[init][k]` (k as a string: "5", "all"), `gain[k]` = pretrained - scratch (points of
    top-1, as fractions), the table text, and where the plot went."""

    means: dict[str, dict[str, float]]
    gain: dict[str, float]
    table: str
    plot: Path | None


def _k_key(k: int | str) -> str:
    if k == ALL or isinstance(k, int) and not isinstance(k, bool) and k >= 1:
        return str(k)
    raise ValueError(f"transfer point k={k!r}: expected a positive int or {ALL!r}")


def _sort_key(k: str) -> tuple[int, int]:
    return (1, 0) if k == ALL else (0, int(k))


def group(points: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, list[float]]]:
    """`{init: {k: [val_top1 per seed, in seed order]}}`, k in increasing order, "all" last."""
    grouped: dict[str, dict[str, list[tuple[int, float]]]] = defaultdict(lambda: defaultdict(list))
    for point in points:
        k = _k_key(point["k"])
        grouped[str(point["init"])][k].append((int(point["seed"]), float(point["val_top1"])))
    inits = sorted(grouped, key=lambda i: (INIT_ORDER.index(i) if i in INIT_ORDER else 99, i))
    return {
        init: {
            k: [v for _, v in sorted(grouped[init][k])]
            for k in sorted(grouped[init], key=_sort_key)
        }
        for init in inits
    }


def format_table(grouped: Mapping[str, Mapping[str, list[float]]]) -> str:
    """One row per k: each init's mean +- half the min-max spread (n seeds), and the gain."""
    ks = sorted({k for by_k in grouped.values() for k in by_k}, key=_sort_key)
    inits = list(grouped)
    header = ["labelled/class", *inits]
    with_gain = all(i in grouped for i in INIT_ORDER)
    if with_gain:
        header.append("gain")
    rows = [header]
    for k in ks:
        row = [k]
        for init in inits:
            values = grouped[init].get(k)
            if not values:
                row.append("-")
                continue
            half = (max(values) - min(values)) / 2
            row.append(
                f"{100 * statistics.fmean(values):6.2f}% +-{100 * half:5.2f} (n={len(values)})"
            )
        if with_gain:
            a, b = grouped["pretrained"].get(k), grouped["scratch"].get(k)
            gain = 100 * (statistics.fmean(a) - statistics.fmean(b)) if a and b else None
            row.append(f"{gain:+6.2f}" if gain is not None else "-")
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(line.rstrip() for line in lines)


def plot(
    grouped: Mapping[str, Mapping[str, list[float]]],
    path: str | Path,
    *,
    all_per_class: float | None = None,
    title: str = "Label efficiency on digits",
) -> Path:
    """Write the curve as a PNG (matplotlib, Agg): x = labelled images per class (log scale;
    "all" at `all_per_class`, else at twice the largest k), y = val top-1 in percent."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    ks = sorted({k for by_k in grouped.values() for k in by_k}, key=_sort_key)
    numeric = [int(k) for k in ks if k != ALL]
    x_all = all_per_class or 2.0 * max(numeric, default=1)
    x_of = {k: (x_all if k == ALL else float(k)) for k in ks}

    figure = Figure(figsize=(6.4, 4.4), dpi=100)
    axes = figure.add_subplot()
    for init, by_k in grouped.items():
        colour, marker = _STYLE.get(init, (None, "^"))
        xs = [x_of[k] for k in by_k]
        means = [100 * statistics.fmean(v) for v in by_k.values()]
        low = [m - 100 * min(v) for m, v in zip(means, by_k.values(), strict=True)]
        high = [100 * max(v) - m for m, v in zip(means, by_k.values(), strict=True)]
        line = axes.errorbar(
            xs, means, yerr=[low, high], color=colour, marker=marker, capsize=4,
            label=f"{init} (mean, bars: min-max over seeds)",
        )  # fmt: skip
        dots_x = [x_of[k] for k, v in by_k.items() for _ in v]
        dots_y = [100 * value for v in by_k.values() for value in v]
        axes.scatter(dots_x, dots_y, color=line[0].get_color(), alpha=0.35, s=14, zorder=3)
    axes.set_xscale("log")
    axes.set_xticks([x_of[k] for k in ks])
    axes.set_xticklabels([f"all ({x_all:.0f})" if k == ALL and all_per_class else k for k in ks])
    axes.minorticks_off()
    axes.set_xlabel("labelled training images per class")
    axes.set_ylabel("validation top-1 (%)")
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend(loc="best")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path


def transfer_report(
    points: Iterable[Mapping[str, Any]],
    path: str | Path | None = None,
    *,
    all_per_class: float | None = None,
) -> TransferReport:
    """Means, gains and the table of `points`; the plot too when `path` is given."""
    grouped = group(points)
    means = {
        init: {k: statistics.fmean(v) for k, v in by_k.items()} for init, by_k in grouped.items()
    }
    gain = {}
    if all(i in means for i in INIT_ORDER):
        gain = {
            k: means["pretrained"][k] - means["scratch"][k]
            for k in means["pretrained"]
            if k in means["scratch"]
        }
    written = plot(grouped, path, all_per_class=all_per_class) if path is not None else None
    return TransferReport(means, gain, format_table(grouped), written)
