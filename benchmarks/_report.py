"""What every benchmark prints and writes, so that a reader can trust and compare the numbers:
the command, the machine and its load (header), a text table, ratios against the baseline's
windows, a goal line, the elapsed time, and the JSON report (written atomically).

Imports torch only (for its version and the device description).
"""

from __future__ import annotations

import json
import os
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from _measure import describe_device


def command_line() -> str:
    """The exact command this process was started with (interpreter included)."""
    return shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))


def load_average() -> tuple[float, float, float] | None:
    return os.getloadavg() if hasattr(os, "getloadavg") else None


def run_header(device: torch.device, **versions: str) -> dict[str, Any]:
    """Print, and return for the JSON report, what a reader needs to trust the numbers: the
    exact command, the device, the library versions and the load at start."""
    report: dict[str, Any] = {
        "command": command_line(),
        "device": describe_device(device),
        "torch": torch.__version__,
        **versions,
        "load_avg": load_average(),
    }
    print(f"command: {report['command']}")
    libs = " | ".join(f"{k} {v}" for k, v in {"torch": torch.__version__, **versions}.items())
    print(f"device: {report['device']} | {libs}")
    if report["load_avg"]:
        print("load average (1/5/15 min): " + " ".join(f"{v:.2f}" for v in report["load_avg"]))
    return report


def finish_report(report: dict[str, Any], started: float, json_path: Path | None) -> None:
    """The elapsed time, the load at the end, and the JSON report where asked for."""
    report["total_s"] = time.perf_counter() - started
    report["load_avg_end"] = load_average()
    end = report["load_avg_end"]
    load = " | load at end " + " ".join(f"{v:.2f}" for v in end) if end else ""
    print(f"total time {report['total_s']:.1f} s{load}")
    if json_path:
        write_json(report, json_path)
        print(f"wrote {json_path}")


def write_json(report: dict[str, Any], path: Path) -> None:
    """Atomically: a reader (or a timeout) never sees half a file. A local file on purpose:
    `pipelines.storage` would bring pyarrow to a GPU machine that has only torch."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str) + "\n")
    tmp.replace(path)


def tflops(flop_per_s: float) -> str:
    return f"{flop_per_s / 1e12:.3f} TFLOP/s"


def one_line(err: BaseException, limit: int = 160) -> str:
    """`TypeName: first line of the message`, shortened: failures go in a table cell."""
    lines = str(err).strip().splitlines()
    text = f"{type(err).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned text columns, numbers right-aligned, one space-padded line per row."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        out = []
        for cell, width in zip(cells, widths, strict=True):
            text = str(cell)
            numeric = text[:1].isdigit() or text[:1] == "-" and text[1:2].isdigit()
            out.append(text.rjust(width) if numeric else text.ljust(width))
        return "  ".join(out).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def compare_windows(times: dict[str, list[float]], baseline: str) -> dict[str, dict[str, float]]:
    """Per name: median, min and max window time, `ratio` (median / the baseline's median) and
    `paired_ratio` (median over rounds of window / the baseline's window of the same round:
    adjacent windows see the same machine, so drift cancels). Lower is better."""
    base = times[baseline]
    out = {}
    for name, windows in times.items():
        median = statistics.median(windows)
        paired = [a / b for a, b in zip(windows, base, strict=True)]
        out[name] = {
            "median_s": median,
            "min_s": min(windows),
            "max_s": max(windows),
            "ratio": median / statistics.median(base),
            "paired_ratio": statistics.median(paired),
        }
    return out


def progress(message: str) -> None:
    """A timestamped progress line on stderr (stdout holds the report)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def print_goal(goal: str, ratios: dict[str, float], limit: float) -> None:
    """`goal <text>: met (a 0.98, b 1.02)` when every ratio is <= limit, else `NOT met`."""
    if ratios:
        met = all(r <= limit for r in ratios.values())
        shown = ", ".join(f"{name} {r:.3f}" for name, r in ratios.items())
        print(f"goal {goal}: {'met' if met else 'NOT met'} ({shown})")
