"""Learning-rate schedule as a pure function of the step, so resume needs nothing but the step."""

from __future__ import annotations

import math

from pipelines.config import ScheduleSection


def lr_factor(step: int, total_steps: int, schedule: ScheduleSection) -> float:
    """Multiplier of the base lr for optimizer step `step` (0-based): linear warmup, then decay."""
    warmup = schedule.warmup_steps
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule.decay == "constant":
        return 1.0
    span = max(total_steps - warmup, 1)
    progress = min(max(step - warmup, 0) / span, 1.0)
    floor = schedule.min_lr_ratio
    if schedule.decay == "linear":
        shape = 1.0 - progress
    else:
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    return floor + (1.0 - floor) * shape
