"""Relative paths in a config mean relative to where the user ran the command; workers run
elsewhere (Ray moves them into its own directories), so the driver makes them absolute."""

from __future__ import annotations

import os
from pathlib import Path

from pipelines.config.job import JobConfig


def _absolute(value: str | None, base: Path) -> str | None:
    if not value or "://" in value:
        return value
    return str((base / os.path.expanduser(value)).resolve())


def with_absolute_paths(config: JobConfig, base: Path | None = None) -> JobConfig:
    base = base or Path.cwd()
    data = config.data.model_copy(
        update={
            "train_shards": _absolute(config.data.train_shards, base),
            "val_shards": _absolute(config.data.val_shards, base),
        }
    )
    cluster = config.cluster.model_copy(
        update={"storage_path": _absolute(config.cluster.storage_path, base)}
    )
    update = {"data": data, "cluster": cluster, "run_dir": _absolute(config.run_dir, base)}
    if config.shard is not None:
        update["shard"] = config.shard.model_copy(
            update={"output": _absolute(config.shard.output, base)}
        )
    return config.model_copy(update=update)
