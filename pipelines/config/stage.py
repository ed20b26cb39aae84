"""The whole job config: every section, plus the checks that span sections."""

from __future__ import annotations

import hashlib
import json

from pydantic import Field, model_validator

from pipelines.config.data import AugmentSection, DataSection, ShardSection
from pipelines.config.distill import DistillSection
from pipelines.config.model import ModelSection
from pipelines.config.runtime import ClusterSection, TrackingSection
from pipelines.config.training import (
    CheckpointSection,
    DeepSpeedSection,
    FinetuneSection,
    OptimSection,
    ScheduleSection,
    TrainSection,
)
from pipelines.errors import ConfigError
from pipelines.section import Section


class StageConfig(Section):
    name: str = Field("vitpipe", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    run_dir: str | None = Field(None, description="None: runs/<name>")
    model: ModelSection = ModelSection()
    data: DataSection = DataSection()
    augment: AugmentSection = AugmentSection()
    optim: OptimSection = OptimSection()
    schedule: ScheduleSection = ScheduleSection()
    deepspeed: DeepSpeedSection = DeepSpeedSection()
    train: TrainSection = TrainSection()
    checkpoint: CheckpointSection = CheckpointSection()
    tracking: TrackingSection = TrackingSection()
    cluster: ClusterSection = ClusterSection()
    shard: ShardSection | None = None
    finetune: FinetuneSection | None = None
    distill: DistillSection | None = None
    runlocal: bool = Field(
        False, description="shrink the recipe to a tiny model on local shards (a quick check)"
    )

    @model_validator(mode="after")
    def _check_across_sections(self) -> StageConfig:
        problems = self._world_size_problems()
        if self.schedule.warmup_steps >= self.train.total_steps:
            problems.append(
                f"schedule.warmup_steps={self.schedule.warmup_steps} must be less than "
                f"train.total_steps={self.train.total_steps}"
            )
        if self.train.fewshot_every_n_steps and not self.data.fewshot_shards:
            problems.append(
                "train.fewshot_every_n_steps needs data.fewshot_shards (a shard dir with "
                "train/val splits, e.g. from configs/shard/digits.yaml)"
            )
        if self.data.decode_device == "cuda" and not self.cluster.use_gpu:
            problems.append("data.decode_device='cuda' needs cluster.use_gpu=true")
        for key in ("randaugment", "random_erasing"):
            if self.data.decode_device == "cuda" and getattr(self.augment, key):
                problems.append(
                    f"augment.{key} runs in the CPU dataloader workers; it needs "
                    "data.decode_device='cpu'"
                )
        if self.distill and not self.finetune and not self.model.vit_config(1).distilled:
            problems.append(
                f"distill needs a student with a distillation token; model.name="
                f"{self.model.name!r} has none (use deit_*_distilled_patch16, or set model.distilled: true)"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _world_size_problems(self) -> list[str]:
        """Every world size the cluster may run at must split the global batch."""
        cluster, t = self.cluster, self.train
        if not cluster.elastic:
            try:
                self.grad_accum_steps(cluster.num_workers)
            except ConfigError as err:
                return list(err.problems)
            return []
        low, high = cluster.worker_range
        if t.grad_accum_steps is not None:
            return [
                f"train.grad_accum_steps={t.grad_accum_steps} is fixed, but cluster.num_workers="
                f"[{low}, {high}] changes the world size; leave it null so that it follows"
            ]
        bad = [w for w in range(low, high + 1) if t.global_batch_size % (t.micro_batch_size * w)]
        if not bad:
            return []
        sizes = (
            f"world size {bad[0]}" if len(bad) == 1 else "world sizes " + ", ".join(map(str, bad))
        )
        return [
            f"cluster.num_workers=[{low}, {high}]: {sizes} cannot split "
            f"train.global_batch_size={t.global_batch_size} (train.micro_batch_size="
            f"{t.micro_batch_size} x w must divide it for every w in the range)"
        ]

    def grad_accum_steps(self, world_size: int) -> int:
        """Accumulation steps that make micro x accum x world equal the global batch."""
        t = self.train
        per_step = t.micro_batch_size * world_size
        if t.global_batch_size % per_step:
            raise ConfigError(
                f"train.global_batch_size={t.global_batch_size} is not divisible by "
                f"train.micro_batch_size={t.micro_batch_size} x world size {world_size}"
            )
        accum = t.global_batch_size // per_step
        if t.grad_accum_steps is not None and t.grad_accum_steps != accum:
            raise ConfigError(
                f"train.global_batch_size={t.global_batch_size} != train.micro_batch_size="
                f"{t.micro_batch_size} x train.grad_accum_steps={t.grad_accum_steps} x world "
                f"size {world_size}; set grad_accum_steps to {accum} or leave it null"
            )
        return accum

    @property
    def resolved_run_dir(self) -> str:
        """A path or a storage URI (`s3://bucket/prefix`); default `runs/<name>`."""
        return self.run_dir or f"runs/{self.name}"

    def stage_run_name(self, stage: str) -> str:
        """The MLflow run name of one stage of this job: tracking.run_name, else `<name>-<stage>`."""
        return self.tracking.run_name or f"{self.name}-{stage}"

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")

    def fingerprint(self, *sections: str) -> str:
        """A stable hash of the given sections (all when none), for checkpoints to compare."""
        data = self.to_dict()
        if sections:
            data = {name: data[name] for name in sections}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
