"""Few-shot evaluation of a backbone on a shard set: frozen features of the `train` and `val`
splits (every sample once across ranks), gathered, then the ViT paper's ridge probe."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from pipelines.config import AugmentSection, DataSection
from pipelines.distributed import DistContext
from pipelines.evaluation.features import extract_features, gather_features
from pipelines.evaluation.fewshot import fewshot_eval

FeatureFn = Callable[[torch.Tensor], torch.Tensor]


def fewshot_on_shards(
    features: FeatureFn | torch.nn.Module,
    root: str,
    *,
    ctx: DistContext,
    data: DataSection,
    augment: AugmentSection,
    img_size: int,
    shots: Sequence[int],
    seed: int = 0,
    micro_batch_size: int = 64,
    train_split: str = "train",
    val_split: str = "val",
) -> dict[str, float]:
    """`{"fewshot/<k>shot_top1": ...}`, the same on every rank."""
    from pipelines.data.loader import ShardLoader

    def loader(split: str) -> ShardLoader:
        return ShardLoader(
            root,
            split,
            rank=ctx.rank,
            world_size=ctx.world_size,
            micro_batch_size=micro_batch_size,
            seed=seed,
            data=data,
            augment=augment,
            img_size=img_size,
            train=False,
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
        seed=seed,
    )
