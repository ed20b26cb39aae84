"""Few-shot evaluation of a backbone on a shard set: frozen features of the `train` and `val`
splits (every sample once across ranks), gathered, then the ViT paper's ridge probe."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from pipelines.config import StageConfig
from pipelines.data.loader.shard_loader import ShardLoader
from pipelines.distributed import DistContext
from pipelines.evaluation.features import extract_features, gather_features
from pipelines.evaluation.fewshot import fewshot_eval

FeatureFn = Callable[[torch.Tensor], torch.Tensor]


def fewshot_on_shards(
    features: FeatureFn | torch.nn.Module,
    config: StageConfig,
    root: str,
    *,
    ctx: DistContext,
    img_size: int,
    shots: Sequence[int],
    train_split: str = "train",
    val_split: str = "val",
) -> dict[str, float]:
    """`{"fewshot/<k>shot_top1": ...}`, the same on every rank."""

    def loader(split: str) -> ShardLoader:
        return ShardLoader.from_config(
            config, ctx, split, train=False, img_size=img_size, root=root
        )

    train_loader = loader(train_split)
    train_x, train_y = gather_features(*extract_features(features, train_loader), ctx)
    val_x, val_y = gather_features(*extract_features(features, loader(val_split)), ctx)
    return fewshot_eval(
        train_x,
        train_y,
        val_x,
        val_y,
        shots=tuple(shots),
        num_classes=train_loader.manifest.num_classes,
        seed=config.train.seed,
    )
