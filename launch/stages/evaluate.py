"""`vitpipe eval`: top-1/top-5/loss, per-class accuracy and a confusion matrix of a model on a
shard set's val split, and (with `--fewshot`) the ViT paper's few-shot linear probe. One
process, no DeepSpeed: it loads any model vitpipe can start from."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from launch.stages.shard import ensure_shards
from launch.stages.training import bound_tracking_retries
from pipelines.config import JobConfig
from pipelines.config.paths import with_absolute_paths
from pipelines.data.manifest import read_manifest
from pipelines.distributed import DistContext
from pipelines.errors import DataError
from pipelines.model_sources import load_source_model
from pipelines.numerics import numerics_info, pin_threads
from pipelines.tracking import mlflow_run


def run_eval_job(
    config: JobConfig,
    *,
    source: str | Path,
    run_dir: Path | None = None,
    fewshot: tuple[int, ...] = (),
    classify: bool | None = None,
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    bound_tracking_retries()
    config = with_absolute_paths(config, run_dir)
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ensure_shards(config, progress=progress)
    started = time.time()
    pin_threads(config.cluster, ray_worker=False)
    loaded = load_source_model(source)
    model = loaded.model
    device = torch.device("cuda" if config.cluster.use_gpu and torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    root = config.data.val_shards or config.data.train_shards
    if not root:
        raise DataError(
            "data.val_shards (or data.train_shards) must point at a shard dir to evaluate on"
        )
    manifest = read_manifest(root)
    matches = model.config.num_classes == manifest.num_classes
    if classify and not matches:
        raise DataError(
            f"the model has {model.config.num_classes} classes but {root} has {manifest.num_classes}"
        )
    classify = matches if classify is None else classify
    if not classify and not fewshot:
        raise DataError(
            f"the model has {model.config.num_classes} classes but {root} has "
            f"{manifest.num_classes}; fine-tune it first, or ask for --fewshot"
        )
    target = mlflow_run.open_run(
        config.tracking,
        run_name=config.tracking.run_name or f"{config.name}-eval",
        parent_run_id=parent_run_id,
        tags={"vitpipe.stage": "eval", "vitpipe.init_from": str(loaded.path), **(tags or {})},
    )
    summary: dict[str, Any] = {
        "stage": "eval",
        "status": "failed",
        "run_dir": str(run_dir),
        "source": loaded.path,
        "source_kind": loaded.kind,
        "data": root,
        "numerics": numerics_info(),
    }
    artifacts: list[Path] = []
    try:
        if classify:
            result = _classify(model, device, config, root, progress)
            from pipelines.evaluation.report import write_report

            written = write_report(result, loaded.classes or list(manifest.classes), run_dir)
            artifacts.extend(written.values())
            summary.update(
                {
                    "val_top1": result.top1,
                    "val_top5": result.top5,
                    "val_loss": result.loss,
                    "count": result.count,
                }
            )
            summary["per_class_accuracy"] = dict(
                zip(manifest.classes, result.per_class_accuracy(), strict=False)
            )
        if fewshot:
            from pipelines.evaluation.probe import fewshot_on_shards

            summary.update(
                fewshot_on_shards(
                    model,
                    config.data.fewshot_shards or config.data.train_shards,
                    ctx=DistContext(device=device.type),
                    data=config.data,
                    augment=config.augment,
                    img_size=model.config.img_size,
                    shots=fewshot,
                    seed=config.train.seed,
                    micro_batch_size=config.train.micro_batch_size,
                )
            )
        summary["status"] = "finished"
    finally:
        summary["elapsed_s"] = round(time.time() - started, 2)
        summary["mlflow_run_id"] = target.run_id if target else None
        summary["mlflow_tracking_uri"] = target.uri if target else None
        path = run_dir / "summary.json"
        path.write_text(json.dumps(summary, indent=1, default=str))
        if target is not None:
            _log(target, summary, [*artifacts, path])
    return summary


def _classify(model, device: torch.device, config: JobConfig, root: str, progress: bool):
    from pipelines.data.loader import ShardLoader
    from pipelines.evaluation.evaluate import evaluate

    loader = ShardLoader(
        root,
        config.data.val_split,
        rank=0,
        world_size=1,
        micro_batch_size=config.train.micro_batch_size,
        seed=config.train.seed,
        data=config.data,
        augment=config.augment,
        img_size=model.config.img_size,
        train=False,
    )
    batches = loader
    if progress:
        from rich.progress import track

        batches = track(loader, total=loader.batches_per_epoch, description="eval")
    return evaluate(
        lambda images: model(images.to(device)),
        batches,
        DistContext(device=device.type),
        num_classes=model.config.num_classes,
        confusion=True,
    )


def _log(target, summary: dict[str, Any], artifacts: list[Path]) -> None:
    numbers = {
        k: float(v)
        for k, v in summary.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }
    try:
        mlflow_run.log_metrics(target, numbers, 0)
        mlflow_run.log_artifacts(target, artifacts)
    finally:
        mlflow_run.finish_run(target, "FINISHED" if summary["status"] == "finished" else "FAILED")
