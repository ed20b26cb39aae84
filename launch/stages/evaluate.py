"""The eval stage (`vitpipe eval`): top-1/top-5/loss, per-class accuracy and a confusion matrix
of a model on a shard set's val split, and (with `--fewshot`) the ViT paper's few-shot linear
probe. One process, no DeepSpeed: it loads any model vitpipe can start from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from launch.stages.lifecycle import stage_run
from launch.stages.shard import ensure_shards
from launch.terminal.progress import progress_wrap
from pipelines.checkpoint.model_sources import load_source_model
from pipelines.config import StageConfig
from pipelines.distributed import DistContext
from pipelines.evaluation.classify import classify_on_shards, eval_device, eval_target
from pipelines.evaluation.probe import fewshot_on_shards
from pipelines.evaluation.report import write_report
from pipelines.numerics import numerics_info, pin_threads
from pipelines.run_storage import RunDir
from pipelines.tracking.run_params import run_params


def run_eval_stage(
    config: StageConfig,
    *,
    source: str | Path,
    run_dir: Path | None = None,
    fewshot: tuple[int, ...] = (),
    classify: bool | None = None,
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    if run_dir is not None:
        config = config.model_copy(update={"run_dir": str(run_dir)})
    files = RunDir.open(config.resolved_run_dir, config.cluster)
    files.local.mkdir(parents=True, exist_ok=True)
    ensure_shards(config, parent_run_id=parent_run_id, progress=progress)
    pin_threads(config.cluster, ray_worker=False)
    loaded = load_source_model(source)
    model = loaded.model.to(eval_device(config)).eval()
    target = eval_target(model, config, classify=classify, fewshot=bool(fewshot))
    with stage_run(
        "eval",
        run_dir=config.resolved_run_dir,
        tracking=config.tracking,
        run_name=config.stage_run_name("eval"),
        parent_run_id=parent_run_id,
        tags={"vitpipe.init_from": str(loaded.path), **(tags or {})},
        params=run_params(config.to_dict(), stage="eval"),
    ) as run:
        run.summary.update(
            source=loaded.path, source_kind=loaded.kind, data=target.root, numerics=numerics_info()
        )
        if target.classify:
            wrap = progress_wrap("eval") if progress else None
            result = classify_on_shards(model, config, target.root, wrap=wrap)
            classes = loaded.classes or list(target.manifest.classes)
            written = write_report(result, classes, files.local)
            for path in written.values():
                files.publish(path.name)
            run.artifacts.extend(written.values())
            run.summary.update(
                val_top1=result.top1,
                val_top5=result.top5,
                val_loss=result.loss,
                count=result.count,
                per_class_accuracy=dict(
                    zip(target.manifest.classes, result.per_class_accuracy(), strict=False)
                ),
            )
        if fewshot:
            run.summary.update(
                fewshot_on_shards(
                    model,
                    config,
                    config.data.fewshot_shards or config.data.require_train_shards(),
                    ctx=DistContext(device=eval_device(config).type),
                    img_size=model.config.img_size,
                    shots=fewshot,
                )
            )
    return run.summary
