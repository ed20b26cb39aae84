"""The label-efficiency curve of `vitpipe run` (a pipeline's `transfer:` section): fine-tunes on
k labelled images per class, from the pretrained checkpoint and from random initialisation, per
seed; then the table, `transfer.png` and the points in the pipeline's summary.

All of them train in this process, one after the other (`--launcher local`: one worker group,
no Ray launch each, which would cost more than the fine-tunes themselves), without their own
MLflow runs or registered models: the pipeline's parent run gets the points and the plot. The
"all labels, first seed" points are the pipeline's main fine-tunes, reused as they are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from launch.stages.finetune import run_finetune_stage
from pipelines.checkpoint.export import export_random_init
from pipelines.config import StageConfig
from pipelines.config.pipeline import PipelineConfig, pipeline_transfer_runs
from pipelines.config.transfer import ALL, TransferRun
from pipelines.data.manifest import read_manifest
from pipelines.evaluation.transfer import TransferReport, transfer_report
from pipelines.storage import Location


def run_transfer_curve(
    pipeline: PipelineConfig,
    finetune: StageConfig,
    *,
    pretrained: dict[str, Any],
    tuned: dict[str, Any],
    scratch: dict[str, Any] | None,
    run_dir: Location,
    progress: bool,
) -> tuple[list[dict[str, Any]], TransferReport]:
    """Every point `{k, seed, init, val_top1}` and the report (plot written to
    `<run dir>/transfer.png`, a local run dir)."""
    root = Path(run_dir.join("transfer").path)
    checkpoint = pretrained["checkpoint"]
    points = []
    for run in pipeline_transfer_runs(pipeline, root):
        reused = _main_result(run, finetune, tuned, scratch)
        result = reused or run_finetune_stage(
            _quiet(run.config),
            init_from=_init(run, checkpoint, root),
            launcher="local",
            tags={"vitpipe.transfer": run.name},
            progress=progress,
        )
        points.append({"k": run.shots, "seed": run.seed, "init": run.init, **_top1(result)})
    manifest = read_manifest(finetune.data.require_train_shards())
    per_class = manifest.split("train").num_samples / manifest.num_classes
    report = transfer_report(points, root.parent / "transfer.png", all_per_class=per_class)
    return points, report


def _main_result(
    run: TransferRun, finetune: StageConfig, tuned: dict, scratch: dict | None
) -> dict | None:
    """The pipeline's own fine-tunes are the all-labels points of its seed."""
    if run.shots != ALL or run.seed != finetune.train.seed:
        return None
    return tuned if run.init == "pretrained" else scratch


def _init(run: TransferRun, checkpoint: str, root: Path) -> str:
    if run.init == "pretrained":
        return checkpoint
    # The seed picks the random initialisation too.
    return export_random_init(checkpoint, root / f"scratch_init_s{run.seed}", seed=run.seed)


def _quiet(config: StageConfig) -> StageConfig:
    """No MLflow run and no registered model per point: the parent run holds the curve."""
    tracking = config.tracking.model_copy(update={"enabled": False})
    finetune = config.finetune.model_copy(update={"register_model": False})
    return config.model_copy(update={"tracking": tracking, "finetune": finetune})


def _top1(result: dict[str, Any]) -> dict[str, float]:
    return {"val_top1": float(result["val_top1"])}
