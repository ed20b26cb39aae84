"""Evaluating a finished model (no DeepSpeed, one process): what it is evaluated on, and its
accuracy, per-class accuracy and confusion matrix on a shard set's val split."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from pipelines.config import StageConfig
from pipelines.data.loader.shard_loader import ShardLoader
from pipelines.data.manifest import Manifest, read_manifest
from pipelines.distributed import DistContext
from pipelines.errors import DataError
from pipelines.evaluation.evaluate import EvalResult, evaluate

Wrap = Callable[[Iterable, int], Iterable]  # (batches, count) -> batches, e.g. a progress bar


@dataclass(frozen=True)
class EvalTarget:
    """Where a model is evaluated and whether it can be scored as a classifier there."""

    root: str
    manifest: Manifest
    classify: bool


def eval_target(
    model: nn.Module, config: StageConfig, *, classify: bool | None, fewshot: bool
) -> EvalTarget:
    """The val shards (`data.val_shards`, else `data.train_shards`, a mix's first source);
    classification needs the model's class count to match them, else only the few-shot probe is
    possible."""
    if not (config.data.val_shards or config.data.train_shards):
        raise DataError(
            "data.val_shards (or data.train_shards) must point at a shard dir to evaluate on"
        )
    root = config.data.val_root()
    manifest = read_manifest(root)
    model_classes = model.config.num_classes
    matches = model_classes == manifest.num_classes
    if classify and not matches:
        raise DataError(
            f"the model has {model_classes} classes but {root} has {manifest.num_classes}"
        )
    classify = matches if classify is None else classify
    if not classify and not fewshot:
        raise DataError(
            f"the model has {model_classes} classes but {root} has {manifest.num_classes}; "
            "fine-tune it first, or ask for --fewshot"
        )
    return EvalTarget(root, manifest, classify)


def eval_device(config: StageConfig) -> torch.device:
    return torch.device("cuda" if config.cluster.use_gpu and torch.cuda.is_available() else "cpu")


def classify_on_shards(
    model: nn.Module, config: StageConfig, root: str, *, wrap: Wrap | None = None
) -> EvalResult:
    """Top-1/top-5/loss and the confusion matrix over every val sample exactly once."""
    device = next(model.parameters()).device
    ctx = DistContext(device=device.type)
    loader = ShardLoader.from_config(
        config, ctx, config.data.val_split, train=False, img_size=model.config.img_size, root=root
    )
    batches: Iterable = wrap(loader, loader.batches_per_epoch) if wrap else loader
    return evaluate(
        lambda images: model(images.to(device)),
        batches,
        ctx,
        num_classes=model.config.num_classes,
        confusion=True,
    )
