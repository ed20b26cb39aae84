"""What rank 0 reports when training ends, typed; `to_summary()` is its form in summary.json
(and the worker result file), the one place that form is decided."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

# Fields spread into the summary rather than nested: few-shot metrics under their own names,
# the train loader's counters as `loader_<name>`.
_SPREAD = {"fewshot": "", "loader": "loader_"}


@dataclass(frozen=True, kw_only=True)
class TrainResult:
    stage: str
    status: str  # "finished", or "stopped" (a stop request, `--stop-at-step`)
    steps: int
    epoch: int
    samples_seen: int
    world_size: int
    nodes: dict[str, list[int]]  # node id -> ranks (a restart may move them)
    final_train_loss: float
    val_top1: float | None
    val_top5: float | None
    val_loss: float | None
    # Whole-run throughput over ranks (`MetricsLogger.finish`).
    images_per_sec: float
    data_wait_frac: float
    mfu: float
    mfu_measured_peak: float
    mfu_with_teacher: float | None = None  # only with a distillation teacher
    mfu_peak: str
    tracking_complete: bool
    fast_path: str
    numerics: dict[str, Any]
    peak_memory_bytes: int | None
    checkpoint: str | None  # the last committed checkpoint (the resumed one if none was saved)
    resumed_from: str | None
    num_classes: int
    fewshot: dict[str, float] = field(default_factory=dict)
    loader: dict[str, int | float] = field(default_factory=dict)

    def to_summary(self) -> dict[str, Any]:
        """The JSON-able dict, keys in field order (`mfu_with_teacher` only when set)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _SPREAD:
                out.update({_SPREAD[f.name] + k: v for k, v in value.items()})
            elif not (f.name == "mfu_with_teacher" and value is None):
                out[f.name] = value
        return out
