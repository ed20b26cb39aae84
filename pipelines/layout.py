"""The names of what vitpipe writes, in one place: every writer and reader of a run dir, a
checkpoint folder or an export takes its file names from here, so a layout change is one edit."""

from __future__ import annotations

# A run dir (`runs/<name>/`): what every stage writes.
CONFIG_RESOLVED = "config.resolved.yaml"
DEEPSPEED_CONFIG = "deepspeed_config.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
WORKER_RESULT = "worker_result.json"
STOP_REQUEST = "STOP"  # touching it asks every rank to checkpoint and exit cleanly
SAMPLE_KEYS_DIR = "sample_keys"
CHECKPOINTS_DIR = "checkpoints"
EXPORT_DIR = "export"
SHARDS_DIR = "shards"

# A checkpoints dir: `step_NNNNNNN/` folders, the `latest` pointer, universal conversions.
MARKER = "COMMITTED.json"
LATEST = "latest"
UNIVERSAL_DIR = "universal"
TAG_PREFIX = "step_"
DEEPSPEED_CONFIG_IN_CHECKPOINT = "ds_config.json"

# An export dir (`vitpipe export`): weights + a config.json whose `format` is this.
EXPORT_FORMAT = "vitpipe-export"
EXPORT_CONFIG = "config.json"
EXPORT_WEIGHTS = "model.safetensors"


def checkpoint_tag(step: int) -> str:
    return f"{TAG_PREFIX}{step:07d}"


def step_of_tag(name: str) -> int | None:
    """The step of a `step_NNNNNNN` folder name, or None for any other name."""
    if not name.startswith(TAG_PREFIX):
        return None
    digits = name[len(TAG_PREFIX) :]
    return int(digits) if digits.isdigit() else None


def sample_keys_name(rank: int) -> str:
    return f"rank{rank:05d}.jsonl"


def sample_keys_rank(name: str) -> int | None:
    """The rank of a `rankNNNNN.jsonl` name, or None for any other name."""
    digits = name.removeprefix("rank").removesuffix(".jsonl")
    return (
        int(digits)
        if name.startswith("rank") and name.endswith(".jsonl") and digits.isdigit()
        else None
    )
