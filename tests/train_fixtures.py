"""Tiny pretraining jobs for tests: a 32 px ViT (patch 4, dim 64, depth 2) on fractal shards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import psutil
import yaml

from pipelines.config import StageConfig, config_from_dict

# A 32 px hybrid: a 2-stage ResNet-V2 backbone (16 tokens) under a 2-block ViT.
TINY_HYBRID: dict[str, Any] = {
    "name": "vit_small_r26_s32",
    "img_size": 32,
    "patch_size": 1,
    "dim": 64,
    "depth": 2,
    "num_heads": 2,
    "head": "mlp",
    "backbone": {"layers": [1, 1], "widths": [32, 64], "stem_width": 16, "num_groups": 8},
}

# A 32 px DeiT student: class and distillation tokens, two linear heads (`head: None` takes the
# pipeline's default for a distilled model; tiny_job's own model section says mlp).
TINY_DISTILLED: dict[str, Any] = {
    "name": "deit_tiny_distilled_patch16",
    "img_size": 32,
    "patch_size": 4,
    "dim": 64,
    "depth": 2,
    "num_heads": 2,
    "head": None,
}


def tiny_job(shards: Path, tmp_path: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "name": "tiny",
        "model": {
            "name": "vit_tiny_patch16",
            "img_size": 32,
            "patch_size": 4,
            "dim": 64,
            "depth": 2,
            "num_heads": 2,
            "head": "mlp",
        },
        "data": {"train_shards": str(shards), "num_workers": 1, "shuffle_buffer": 50},
        "augment": {"scale": [0.5, 1.0]},
        "optim": {"lr": 0.003, "weight_decay": 0.05},
        "schedule": {"warmup_steps": 2},
        "deepspeed": {"zero_stage": 2},
        "train": {
            "total_steps": 8,
            "global_batch_size": 32,
            "micro_batch_size": 16,
            "log_every_n_steps": 1,
            "seed": 1,
        },
        "checkpoint": {"every_n_steps": 4, "keep_last": 2},
        "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "tests"},
        "cluster": {"num_workers": 2},
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            raw.setdefault(section, {}).update(values)
        else:
            raw[section] = values
    return raw


def as_config(raw: dict[str, Any]) -> StageConfig:
    return config_from_dict(raw)


def write_yaml(raw: dict[str, Any], path: Path) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def train_losses(run_dir: Path) -> dict[int, float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    return {r["step"]: r["train/loss"] for r in records if "train/loss" in r}


def keys_by_epoch(run_dir: Path) -> dict[int, list[str]]:
    """Every sample key the run's ranks read (`train.record_sample_keys`), by epoch."""
    keys: dict[int, list[str]] = {}
    for path in sorted((run_dir / "sample_keys").glob("rank*.jsonl")):
        for line in path.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                keys.setdefault(record["epoch"], []).extend(record["keys"])
    return keys


def child_env() -> dict[str, str]:
    """This process's environment without torchrun's variables: an in-process job (or engine
    fixture) sets them here, and a child that inherits them would join a store on a port this
    process still holds."""
    torchrun = (
        "MASTER_ADDR",
        "MASTER_PORT",
        "RANK",
        "WORLD_SIZE",
        "LOCAL_RANK",
        "LOCAL_WORLD_SIZE",
    )
    return {k: v for k, v in os.environ.items() if k not in torchrun}


def summary(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "summary.json").read_text())


def kill_session(job: subprocess.Popen) -> None:
    """SIGKILL every process of the job's session (the CLI, its local Ray, its workers)."""
    session = os.getsid(job.pid)
    os.killpg(job.pid, signal.SIGKILL)
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == session:
                proc.kill()
        except (ProcessLookupError, psutil.Error):
            continue
