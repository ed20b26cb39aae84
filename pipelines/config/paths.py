"""Where a job reads and writes, made explicit and absolute before anything starts.

Relative paths mean relative to where the user ran the command; workers run elsewhere (Ray
moves them into its own directories), so the driver resolves them. Defaults that depend on the
run dir are filled in here: shards go to `<run dir>/shards` and training reads what was sharded.
"""

from __future__ import annotations

import os
from pathlib import Path

from pipelines.config.job import JobConfig


def _absolute(value: str | None, base: Path) -> str | None:
    if not value or "://" in value:
        return value
    return str((base / os.path.expanduser(value)).resolve())


def with_absolute_paths(
    config: JobConfig, run_dir: Path | str | None = None, base: Path | None = None
) -> JobConfig:
    base = base or Path.cwd()
    resolved_run_dir = _absolute(str(run_dir or config.resolved_run_dir), base)
    update: dict = {"run_dir": resolved_run_dir}
    shard_output = None
    if config.shard is not None:
        shard_output = _absolute(config.shard.output, base) or str(
            Path(resolved_run_dir) / "shards"
        )
        update["shard"] = config.shard.model_copy(update={"output": shard_output})
    update["data"] = config.data.model_copy(
        update={
            "train_shards": _absolute(config.data.train_shards, base) or shard_output,
            "val_shards": _absolute(config.data.val_shards, base),
            "fewshot_shards": _absolute(config.data.fewshot_shards, base),
        }
    )
    update["cluster"] = config.cluster.model_copy(
        update={"storage_path": _absolute(config.cluster.storage_path, base)}
    )
    return config.model_copy(update=update)
