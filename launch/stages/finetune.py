"""The fine-tuning stage: the training stage started from a pretrained model (`--from`) whose MLP
head is swapped for a zero-initialised linear head; on success the model is exported
(safetensors + config.json + class names) and registered in the MLflow Model Registry."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from launch.stages.training import run_training_stage
from pipelines.checkpoint.export import export_checkpoint
from pipelines.checkpoint.model_sources import check_source
from pipelines.config import FinetuneSection, StageConfig
from pipelines.layout import EXPORT_DIR
from pipelines.run_storage import RunDir
from pipelines.tracking.mlflow_run import TrackingTarget
from pipelines.tracking.registry import log_and_register


def run_finetune_stage(
    config: StageConfig,
    *,
    init_from: str | Path,
    run_dir: Path | None = None,
    resume: str = "auto",
    launcher: str = "ray",
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
    progress: bool = True,
    stop_at_step: int | None = None,
) -> dict[str, Any] | None:
    if config.finetune is None:
        config = config.model_copy(update={"finetune": FinetuneSection()})
    kind = check_source(init_from)  # a wrong or unsafe --from fails here, before anything starts

    def export_and_register(summary: dict[str, Any], target: TrackingTarget | None):
        return _export_and_register(config, summary, target)

    return run_training_stage(
        config,
        stage="finetune",
        run_dir=run_dir,
        resume=resume,
        launcher=launcher,
        init_from=str(init_from),
        parent_run_id=parent_run_id,
        tags={"vitpipe.init_kind": kind, **(tags or {})},
        progress=progress,
        stop_at_step=stop_at_step,
        on_success=export_and_register,
    )


def registered_name(config: StageConfig) -> str:
    name = config.tracking.registered_model or f"{config.tracking.experiment}-{config.name}"
    return re.sub(r"[^A-Za-z0-9_.\-]", "-", name)


def _export_and_register(
    config: StageConfig, summary: dict[str, Any], target: TrackingTarget | None
) -> dict[str, Any]:
    files = RunDir.open(summary["run_dir"], config.cluster)
    local = files.path(EXPORT_DIR)
    shutil.rmtree(local, ignore_errors=True)  # derived from the checkpoint: rebuilt each time
    info = export_checkpoint(summary["checkpoint"], local)
    files.publish_tree(EXPORT_DIR)
    extra: dict[str, Any] = {"export_dir": files.at(EXPORT_DIR).uri, "registered_model_uri": None}
    if target is None or not config.finetune.register_model:
        return extra
    size = info["vit_config"]["img_size"]
    example = np.random.default_rng(0).integers(0, 256, (2, size, size, 3), dtype=np.uint8)
    extra["registered_model_uri"] = log_and_register(
        target, local, registered_name=registered_name(config), input_example=example
    )
    return extra
