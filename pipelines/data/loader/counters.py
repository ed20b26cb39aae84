"""A rank's loader counters. Workers share no memory with the trainer, so every batch carries
its worker's cumulative counts; the latest per consumer are 'live' until the epoch's iterator
ends, then folded into the totals."""

from __future__ import annotations

from collections import Counter
from typing import Any

COUNTERS = ("samples", "skipped", "refilled", "padded")


class LoaderCounters:
    def __init__(self) -> None:
        self._totals: Counter[str] = Counter()
        self._live: dict[int, dict[str, int]] = {}

    def update(self, batch_stats: dict[str, Any]) -> None:
        """Take a batch's `stats` ({'consumer': c, counter: cumulative value, ...})."""
        stats = dict(batch_stats)
        self._live[stats.pop("consumer")] = stats

    def fold(self) -> None:
        for counts in self._live.values():
            self._totals.update(counts)
        self._live = {}

    def stats(self, device_failed: int = 0) -> dict[str, int | float]:
        """samples, samples_skipped/refilled/padded and skip_fraction; `device_failed` samples
        were read by a worker but were undecodable on the device."""
        totals = Counter(self._totals)
        for counts in self._live.values():
            totals.update(counts)
        totals["skipped"] += device_failed
        totals["samples"] -= device_failed
        out: dict[str, int | float] = {
            f"samples_{k}" if k != "samples" else k: totals[k] for k in COUNTERS
        }
        attempted = totals["samples"] + totals["skipped"]
        out["skip_fraction"] = totals["skipped"] / attempted if attempted else 0.0
        return out
