"""Typed, frozen job configuration: YAML -> overrides -> strict validation."""

from pipelines.config.data import AugmentSection, DataSection, ShardSection, SourceSection
from pipelines.config.distill import DistillSection
from pipelines.config.loader import (
    apply_overrides,
    config_from_dict,
    dump_config,
    load_config,
    parse_override_value,
)
from pipelines.config.model import BackboneSection, ModelSection
from pipelines.config.runtime import ClusterSection, TrackingSection
from pipelines.config.stage import StageConfig
from pipelines.config.training import (
    CheckpointSection,
    DeepSpeedSection,
    FinetuneSection,
    OptimSection,
    ScheduleSection,
    TrainSection,
)

__all__ = [
    "AugmentSection",
    "BackboneSection",
    "CheckpointSection",
    "ClusterSection",
    "DataSection",
    "DeepSpeedSection",
    "DistillSection",
    "FinetuneSection",
    "StageConfig",
    "ModelSection",
    "OptimSection",
    "ScheduleSection",
    "ShardSection",
    "SourceSection",
    "TrackingSection",
    "TrainSection",
    "apply_overrides",
    "config_from_dict",
    "dump_config",
    "load_config",
    "parse_override_value",
]
