"""Shards -> batches: a deterministic, resumable, corruption-tolerant training and eval loader.

Modules, one job each: `read_plan` (who reads which sample in which order; pure), `tar_reader`
(stream samples out of one tar, no-throw, webdataset's grouping rules), `shard_files` (links,
sizes and sha256 of shard files), `transforms` (decode + seeded augmentation), `dataset` (the
per-worker IterableDataset), `shard_loader` (the rank's loader), `loader_state` (its state).
"""

from pipelines.data.loader.read_plan import (
    EpochPlan,
    Segment,
    Topology,
    plan_eval,
    plan_train_epoch,
    shard_order,
    shuffle_buffer_order,
)
from pipelines.data.loader.shard_loader import ShardLoader, split_fingerprint

__all__ = [
    "EpochPlan",
    "Segment",
    "ShardLoader",
    "Topology",
    "plan_eval",
    "plan_train_epoch",
    "shard_order",
    "shuffle_buffer_order",
    "split_fingerprint",
]
