"""A pipeline config (`vitpipe run`): the pretraining and fine-tuning job configs of one
experiment in one file, plus `shared:` sections merged into both (cluster, tracking, ...).

    name: demo
    shared: {cluster: {num_workers: 2}, tracking: {experiment: vitpipe-demo}}
    pretrain: {shard: ..., model: ..., train: ...}      # a full job config
    finetune: {shard: ..., finetune: ..., optim: ...}   # a full job config
    eval: {fewshot_shots: [5, 10]}
    compare_from_scratch: true
    transfer: {seeds: [0, 1, 2], points: [{shots: 5, finetune: {...}}, ...]}  # optional

`transfer:` (the label-efficiency curve) is described in `pipelines.config.transfer`.

Every problem of every stage is reported at once, prefixed with the stage (`pretrain.optim.lr`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError

from pipelines.config.loader import _describe, apply_overrides, config_from_dict, read_yaml
from pipelines.config.paths import absolute, with_absolute_paths
from pipelines.config.stage import StageConfig
from pipelines.config.transfer import TransferRun, TransferSection, deep_merge, transfer_runs
from pipelines.errors import ConfigError
from pipelines.section import Section
from pipelines.storage import Location, locate

STAGES = ("pretrain", "finetune")


class EvalStageSection(Section):
    fewshot_shots: list[int] = Field([5, 10], min_length=1)


class PipelineConfig(Section):
    name: str = Field("pipeline", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    run_dir: str | None = Field(None, description="None: runs/<name>")
    shared: dict[str, Any] = {}
    pretrain: dict[str, Any]
    finetune: dict[str, Any]
    eval: EvalStageSection = EvalStageSection()
    compare_from_scratch: bool = True
    runlocal: bool = Field(
        False, description="shrink both stages (see pipelines/config/runlocal.py)"
    )
    transfer: TransferSection | None = None

    @property
    def resolved_run_dir(self) -> str:
        return self.run_dir or f"runs/{self.name}"


def is_pipeline(raw: dict[str, Any]) -> bool:
    """A pipeline has a `pretrain:` section; a job config never does (a fine-tuning job config
    has its own `finetune:` section, so that key alone decides nothing)."""
    return "pretrain" in raw


def load_pipeline(
    path: str | Path, overrides: list[str] | tuple[str, ...] = ()
) -> tuple[PipelineConfig, dict[str, StageConfig]]:
    """The pipeline and one validated `StageConfig` per stage; `ConfigError` lists every problem."""
    path = Path(path)
    raw = read_yaml(path)
    if not is_pipeline(raw):
        raise ConfigError(
            [
                f"{path} is a job config (no `pretrain:` section); a pipeline config has "
                "`pretrain:` and `finetune:` job sections (see configs/demo.yaml)"
            ]
        )
    raw = apply_overrides(raw, overrides)
    raw.setdefault("name", path.stem)
    return pipeline_from_dict(raw)


def pipeline_from_dict(raw: dict[str, Any]) -> tuple[PipelineConfig, dict[str, StageConfig]]:
    problems: list[str] = []
    try:
        pipeline = PipelineConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError([_describe(e, PipelineConfig) for e in err.errors()]) from None
    stages: dict[str, StageConfig] = {}
    for stage in STAGES:
        merged = stage_dict(pipeline, stage)
        try:
            stages[stage] = config_from_dict(merged)
        except ConfigError as err:
            problems.extend(f"{stage}.{p}" for p in err.problems)
    if pipeline.transfer is not None and not problems:
        try:
            transfer_runs(pipeline.transfer, stage_dict(pipeline, "finetune"))
        except ConfigError as err:
            problems.extend(err.problems)
    if problems:
        raise ConfigError(problems)
    return pipeline, stages


def stage_dict(pipeline: PipelineConfig, stage: str) -> dict[str, Any]:
    """A stage's job config as a dict, `shared:` merged in (before validation)."""
    merged = deep_merge(pipeline.shared, getattr(pipeline, stage))
    merged.setdefault("name", f"{pipeline.name}-{stage}")
    if pipeline.runlocal:
        merged["runlocal"] = True
    return merged


def pipeline_transfer_runs(pipeline: PipelineConfig, root: Path) -> list[TransferRun]:
    """The label-efficiency runs of `pipeline` (none without `transfer:`), under `root`."""
    if pipeline.transfer is None:
        return []
    runs = transfer_runs(pipeline.transfer, stage_dict(pipeline, "finetune"), root=root)
    return [
        dataclasses.replace(run, config=with_absolute_paths(run.config, run.config.run_dir))
        for run in runs
    ]


def resolve_stages(
    pipeline: PipelineConfig, stages: dict[str, StageConfig], run_dir: str | None = None
) -> tuple[Location, dict[str, StageConfig]]:
    """The pipeline's run dir (absolute, or a storage URI) and its stage configs with absolute
    paths, each stage in `<run dir>/<stage>`, all logging to the pretraining stage's MLflow
    experiment (nested runs only nest within one experiment)."""
    root = locate(absolute(str(run_dir or pipeline.resolved_run_dir)))
    resolved = {name: with_absolute_paths(cfg, root.join(name).uri) for name, cfg in stages.items()}
    experiment = resolved["pretrain"].tracking.experiment
    for name, cfg in resolved.items():
        tracking = cfg.tracking.model_copy(update={"experiment": experiment})
        resolved[name] = cfg.model_copy(update={"tracking": tracking})
    return root, resolved
