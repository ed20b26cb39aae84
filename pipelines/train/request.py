"""What a launcher hands to the Trainer: everything a worker needs, picklable."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipelines.config import StageConfig
from pipelines.run_storage import RunDir
from pipelines.tracking.mlflow_run import TrackingTarget


@dataclass(frozen=True, kw_only=True)
class TrainRequest:
    config: StageConfig
    run_dir: str  # run storage: a local path, a shared filesystem path or a URI
    stage: str = "pretrain"
    resume: str = "auto"  # auto | never | a checkpoint path: what the driver chooses from
    tracking: TrackingTarget | None = None
    init_from: str | None = None  # fine-tuning: an export, checkpoint or HF dir
    tags: dict[str, str] = field(default_factory=dict)
    stop_at_step: int | None = None  # checkpoint and stop cleanly here (time-boxed allocations)
    # Set by the driver (`checkpointer.plan_launch`); None on a torchrun rank other than 0,
    # which gets rank 0's. Ray Train runs a restarted worker group with this same request: the
    # launch id tells the checkpoints this launch committed from older ones.
    launch_id: str | None = None
    resume_from: str | None = None  # the checkpoint the driver chose and checked; None: fresh

    def files(self, node_id: str = "driver") -> RunDir:
        """The run dir as a process on `node_id` reads and writes it."""
        return RunDir.open(self.run_dir, self.config.cluster, node_id)
