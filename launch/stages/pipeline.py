"""`vitpipe run`: shard -> pretrain -> fine-tune -> eval as one MLflow parent run with a nested
run per stage and lineage tags, plus the same fine-tune from random initialisation so the
final table shows what pretraining bought."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from launch.stages.evaluate import run_eval_job
from launch.stages.finetune import run_finetune_job
from launch.stages.shard import ensure_shards
from launch.stages.training import bound_tracking_retries, run_training_job
from pipelines.config import FinetuneSection, JobConfig
from pipelines.config.paths import with_absolute_paths
from pipelines.config.pipeline import PipelineConfig
from pipelines.tracking import mlflow_run


def run_pipeline(
    pipeline: PipelineConfig,
    stages: dict[str, JobConfig],
    *,
    run_dir: Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    bound_tracking_retries()
    started = time.time()
    run_dir = Path(run_dir or pipeline.resolved_run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    pretrain_cfg = with_absolute_paths(stages["pretrain"], run_dir / "pretrain")
    finetune_cfg = with_absolute_paths(stages["finetune"], run_dir / "finetune")
    # Nested runs only nest within one experiment: every stage logs to the pipeline's.
    experiment = pretrain_cfg.tracking.experiment
    finetune_cfg = _with_experiment(finetune_cfg, experiment)
    parent = mlflow_run.open_run(
        pretrain_cfg.tracking, run_name=pipeline.name, tags={"vitpipe.stage": "pipeline"}
    )
    parent_id = parent.run_id if parent else None
    summary: dict[str, Any] = {"stage": "pipeline", "status": "failed", "run_dir": str(run_dir)}
    try:
        from launch.ray_cluster import ray_session

        with ray_session(pretrain_cfg.cluster):  # one Ray for every stage
            ensure_shards(pretrain_cfg, progress=progress)
            pre = run_training_job(
                pretrain_cfg, stage="pretrain", parent_run_id=parent_id, progress=progress
            )
            _require_finished("pretrain", pre)
            lineage = {
                "vitpipe.lineage.pretrain_checkpoint": str(pre["checkpoint"]),
                "vitpipe.lineage.pretrain_run_id": str(pre.get("mlflow_run_id")),
            }
            fine = run_finetune_job(
                finetune_cfg,
                init_from=pre["checkpoint"],
                parent_run_id=parent_id,
                tags=lineage,
                progress=progress,
            )
            _require_finished("finetune", fine)
            scratch = None
            if pipeline.compare_from_scratch:
                scratch = _finetune_from_scratch(finetune_cfg, pre, run_dir, parent_id, progress)
        evaluated = run_eval_job(
            finetune_cfg,
            source=fine["export_dir"],
            run_dir=run_dir / "eval",
            parent_run_id=parent_id,
            tags={"vitpipe.lineage.finetune_run_id": str(fine.get("mlflow_run_id"))},
            progress=progress,
        )
        fewshot = run_eval_job(
            finetune_cfg,
            source=pre["checkpoint"],
            run_dir=run_dir / "fewshot",
            fewshot=tuple(pipeline.eval.fewshot_shots),
            classify=False,
            parent_run_id=parent_id,
            tags=lineage,
            progress=progress,
        )
        summary.update(
            {
                "status": "finished",
                "pretrain_final_loss": pre.get("final_train_loss"),
                "pretrain_val_top1": pre.get("val_top1"),
                "pretrained_val_top1": evaluated.get("val_top1"),
                "scratch_val_top1": scratch.get("val_top1") if scratch else None,
                "registered_model_uri": fine.get("registered_model_uri"),
                **{k: v for k, v in fewshot.items() if k.startswith("fewshot/")},
                "stages": {
                    "pretrain": pre["run_dir"],
                    "finetune": fine["run_dir"],
                    "finetune_scratch": scratch["run_dir"] if scratch else None,
                    "eval": evaluated["run_dir"],
                    "fewshot": fewshot["run_dir"],
                },
                "pretrain_checkpoint": pre["checkpoint"],
                "export_dir": fine.get("export_dir"),
            }
        )
    finally:
        summary["elapsed_s"] = round(time.time() - started, 1)
        summary["mlflow_run_id"] = parent_id
        summary["mlflow_tracking_uri"] = parent.uri if parent else None
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
        if parent is not None:
            numbers = {
                k: float(v)
                for k, v in summary.items()
                if isinstance(v, int | float) and not isinstance(v, bool)
            }
            try:
                mlflow_run.log_metrics(parent, numbers, 0)
                mlflow_run.log_artifacts(parent, [run_dir / "summary.json"])
            finally:
                mlflow_run.finish_run(
                    parent, "FINISHED" if summary["status"] == "finished" else "FAILED"
                )
    return summary


def format_table(summary: dict[str, Any]) -> str:
    def pct(value: Any) -> str:
        return f"{100 * value:6.2f}%" if isinstance(value, int | float) else "     -"

    rows = [
        ("fine-tuned from the pretrained checkpoint", summary.get("pretrained_val_top1")),
        ("fine-tuned from random initialisation", summary.get("scratch_val_top1")),
    ]
    rows += [
        (
            f"few-shot linear probe, pretrained backbone ({key.split('/')[1].replace('shot_top1', '-shot')})",
            value,
        )
        for key, value in summary.items()
        if key.startswith("fewshot/") and key.endswith("_top1")
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"{'downstream val top-1':<{width}}  accuracy", "-" * (width + 10)]
    lines += [f"{name:<{width}}  {pct(value)}" for name, value in rows]
    lines.append(
        f"elapsed {summary.get('elapsed_s')} s; registered model: {summary.get('registered_model_uri')}"
    )
    return "\n".join(lines)


def _finetune_from_scratch(
    config: JobConfig, pre: dict, run_dir: Path, parent_id, progress: bool
) -> dict:
    """The same fine-tune, from a random initialisation of the same architecture."""
    import torch

    from pipelines.export import export_info, save_model
    from pipelines.train.checkpoint import open_checkpoint
    from vit_core import VisionTransformer, ViTConfig

    meta = open_checkpoint(Path(pre["checkpoint"])).meta
    init_dir = run_dir / "scratch_init"
    if not (init_dir / "model.safetensors").is_file():
        torch.manual_seed(config.train.seed)
        model = VisionTransformer(ViTConfig.from_dict(meta["vit_config"]))
        info = export_info(model, stage="random-init", preprocess=meta.get("preprocess"))
        save_model(model, init_dir, info=info)
    finetune = config.finetune or FinetuneSection()
    scratch_cfg = config.model_copy(
        update={
            "name": f"{config.name}-scratch",
            "run_dir": str(run_dir / "finetune_scratch"),
            "finetune": finetune.model_copy(update={"register_model": False}),
        }
    )
    result = run_finetune_job(
        scratch_cfg,
        init_from=init_dir,
        parent_run_id=parent_id,
        tags={"vitpipe.lineage.init": "random"},
        progress=progress,
    )
    _require_finished("finetune from scratch", result)
    return result


def _with_experiment(config: JobConfig, experiment: str) -> JobConfig:
    return config.model_copy(
        update={"tracking": config.tracking.model_copy(update={"experiment": experiment})}
    )


def _require_finished(stage: str, result: dict) -> None:
    if result.get("status") != "finished":
        from pipelines.errors import VitpipeError

        raise VitpipeError(
            f"{stage} ended with status {result.get('status')!r}; see {result.get('run_dir')}"
        )
