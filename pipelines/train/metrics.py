"""metrics.jsonl (always, on rank 0) and the throughput numbers that go into it."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any


class MetricsFile:
    """Append-only JSON lines with a `step` each. On resume, lines past the resumed step (logged
    after the checkpoint, before the crash) are dropped so the file reads as one clean run."""

    def __init__(self, path: Path, *, resume_step: int | None):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            path.write_text("")
        elif path.exists():
            kept = [
                line
                for line in path.read_text().splitlines()
                if line.strip() and _step_of(line) is not None and _step_of(line) <= resume_step
            ]
            tmp = path.with_suffix(".tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            tmp.replace(path)

    def write(self, record: dict[str, Any]) -> None:
        clean = {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in record.items()
        }
        with self.path.open("a") as out:
            out.write(json.dumps(clean) + "\n")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _step_of(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


class Throughput:
    """Images/s and the fraction of wall time spent waiting for data, over a logging window."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._start = time.perf_counter()
        self._images = 0
        self._wait = 0.0
        self.total_images = 0
        self.total_wait = 0.0
        self.total_time = 0.0

    def add(self, images: int, wait_s: float) -> None:
        self._images += images
        self._wait += wait_s

    def window(self) -> dict[str, float]:
        elapsed = max(time.perf_counter() - self._start, 1e-9)
        out = {"images_per_sec": self._images / elapsed, "data_wait_frac": self._wait / elapsed}
        self.total_images += self._images
        self.total_wait += self._wait
        self.total_time += elapsed
        self._start = time.perf_counter()
        self._images = 0
        self._wait = 0.0
        return out

    def overall(self) -> dict[str, float]:
        if self.total_time <= 0:
            return {"images_per_sec": 0.0, "data_wait_frac": 0.0}
        return {
            "images_per_sec": self.total_images / self.total_time,
            "data_wait_frac": self.total_wait / self.total_time,
        }
