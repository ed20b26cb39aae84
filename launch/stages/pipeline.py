"""`vitpipe run`: shard -> pretrain -> fine-tune -> eval as one MLflow parent run with a nested
run per stage and lineage tags, plus the same fine-tune from random initialisation so the
final table shows what pretraining bought. Every stage runs in one Ray session."""

from __future__ import annotations

from typing import Any

from launch.processes.ray_cluster import ray_session
from launch.stages.evaluate import run_eval_stage
from launch.stages.finetune import run_finetune_stage
from launch.stages.lifecycle import stage_run
from launch.stages.training import run_training_stage
from launch.stages.transfer import run_transfer_curve
from pipelines.checkpoint.export import export_random_init
from pipelines.config import FinetuneSection, StageConfig
from pipelines.config.pipeline import PipelineConfig
from pipelines.errors import VitpipeError
from pipelines.evaluation.transfer import format_table as transfer_table
from pipelines.evaluation.transfer import group
from pipelines.storage import Location
from pipelines.tracking.run_params import run_params


def run_pipeline(
    pipeline: PipelineConfig,
    stages: dict[str, StageConfig],
    *,
    run_dir: Location,
    progress: bool = True,
) -> dict[str, Any]:
    """`stages` are the pipeline's job configs with absolute paths, each with its own run dir
    under `run_dir` (the CLI resolves them)."""
    pretrain_cfg, finetune_cfg = stages["pretrain"], stages["finetune"]
    with stage_run(
        "pipeline",
        run_dir=run_dir.uri,
        tracking=pretrain_cfg.tracking,
        run_name=pipeline.name,
        params=run_params(pipeline.model_dump(mode="json"), stage="pipeline"),
    ) as run:
        parent_id = run.tracking.run_id if run.tracking else None
        with ray_session(pretrain_cfg.cluster):  # one Ray for every stage
            pre = run_training_stage(
                pretrain_cfg, stage="pretrain", parent_run_id=parent_id, progress=progress
            )
            _require_finished("pretrain", pre)
            lineage = {
                "vitpipe.lineage.pretrain_checkpoint": str(pre["checkpoint"]),
                "vitpipe.lineage.pretrain_run_id": str(pre.get("mlflow_run_id")),
            }
            fine = run_finetune_stage(
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
            if pipeline.transfer is not None:
                points, report = run_transfer_curve(
                    pipeline,
                    finetune_cfg,
                    pretrained=pre,
                    tuned=fine,
                    scratch=scratch,
                    run_dir=run_dir,
                    progress=progress,
                )
                run.artifacts.append(report.plot)
                run.summary.update(
                    transfer=points,
                    transfer_means=report.means,
                    transfer_gain=report.gain,
                )
        evaluated = run_eval_stage(
            finetune_cfg,
            source=fine["export_dir"],
            run_dir=run_dir.join("eval").uri,
            parent_run_id=parent_id,
            tags={"vitpipe.lineage.finetune_run_id": str(fine.get("mlflow_run_id"))},
            progress=progress,
        )
        fewshot = run_eval_stage(
            finetune_cfg,
            source=pre["checkpoint"],
            run_dir=run_dir.join("fewshot").uri,
            fewshot=tuple(pipeline.eval.fewshot_shots),
            classify=False,
            parent_run_id=parent_id,
            tags=lineage,
            progress=progress,
        )
        run.summary.update(
            {
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
    return run.summary


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
    if summary.get("transfer"):
        lines += [
            "",
            "label efficiency (downstream val top-1, mean +- half the seed spread over seeds):",
        ]
        lines.append(transfer_table(group(summary["transfer"])))
    lines.append(
        f"elapsed {summary.get('elapsed_s')} s; registered model: {summary.get('registered_model_uri')}"
    )
    return "\n".join(lines)


def _finetune_from_scratch(
    config: StageConfig, pre: dict, run_dir: Location, parent_id, progress: bool
) -> dict:
    """The same fine-tune, from a random initialisation of the same architecture."""
    init_dir = export_random_init(
        pre["checkpoint"], run_dir.join("scratch_init").uri, seed=config.train.seed
    )
    finetune = config.finetune or FinetuneSection()
    scratch_cfg = config.model_copy(
        update={
            "name": f"{config.name}-scratch",
            "run_dir": run_dir.join("finetune_scratch").uri,
            "finetune": finetune.model_copy(update={"register_model": False}),
        }
    )
    result = run_finetune_stage(
        scratch_cfg,
        init_from=init_dir,
        parent_run_id=parent_id,
        tags={"vitpipe.lineage.init": "random"},
        progress=progress,
    )
    _require_finished("finetune from scratch", result)
    return result


def _require_finished(stage: str, result: dict) -> None:
    if result.get("status") != "finished":
        raise VitpipeError(
            f"{stage} ended with status {result.get('status')!r}; see {result.get('run_dir')}"
        )
