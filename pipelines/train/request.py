"""What a launcher hands to the Trainer: everything a worker needs, picklable."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pipelines.config import JobConfig
from pipelines.layout import CHECKPOINTS_DIR, METRICS, STOP_REQUEST
from pipelines.tracking.mlflow_run import TrackingTarget


@dataclass(frozen=True, kw_only=True)
class TrainRequest:
    config: JobConfig
    run_dir: Path
    stage: str = "pretrain"
    resume: str = "auto"  # auto | never | a checkpoint path
    tracking: TrackingTarget | None = None
    init_from: str | None = None  # fine-tuning: an export, checkpoint or HF dir
    tags: dict[str, str] = field(default_factory=dict)
    stop_at_step: int | None = None  # checkpoint and stop cleanly here (time-boxed allocations)

    @property
    def checkpoint_root(self) -> Path:
        return self.run_dir / CHECKPOINTS_DIR

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / METRICS

    @property
    def stop_file(self) -> Path:
        """Touching this file asks every rank to checkpoint and exit cleanly (SIGTERM does it)."""
        return self.run_dir / STOP_REQUEST
