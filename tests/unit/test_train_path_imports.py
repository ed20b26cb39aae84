"""The GPU machine has no Ray, MLflow or webdataset (and DeepSpeed only once the check installs
it): the modules a `--launcher local` training step runs through must import without them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODULES = [
    "pipelines.train.engine",
    "pipelines.train.ds_config",
    "pipelines.train.optim",
    "pipelines.train.peak",
    "pipelines.checkpoint.fp32_master",
    "pipelines.train.trainer",
    "launch.processes.launchers",
    "launch.stages.training",
    "launch.cli",
    "pipelines.data.loader",
    "pipelines.data.loader.device_decode",
    "pipelines.data.loader.device_prefetch",
    "pipelines.checkpoint.export",
]


def test_the_training_path_imports_without_ray_mlflow_webdataset_or_deepspeed():
    code = (
        "import importlib, sys\n"
        "for name in ('ray', 'mlflow', 'webdataset', 'deepspeed'):\n"
        "    sys.modules[name] = None  # any import of them now raises ImportError\n"
        f"for module in {MODULES!r}:\n"
        "    importlib.import_module(module)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
