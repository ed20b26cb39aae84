"""Frozen representations for few-shot and linear evaluation.

`extract_features` runs a model over loader batches (`ShardLoader` dicts: `image`, `label`,
`valid`) and keeps the valid rows; `gather_features` concatenates every rank's rows, in rank order,
on every rank. Every rank must call it (it is a collective) with features of the same width.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from pipelines.distributed import DistContext

FeatureFn = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def extract_features(
    model: nn.Module | FeatureFn,
    batches: Iterable[dict[str, Any]],
    *,
    max_batches: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features float32 (N, D) on the CPU, labels int64 (N,)) over the valid rows of `batches`.

    `model` is a ViT-like module (`forward_features` + `forward_head(x, pre_logits=True)`: the
    representation the head sees), run in eval mode on its own device and put back in its
    previous mode afterwards; or any callable from images (B, C, S, S) to features (B, D), which
    is then responsible for its device and mode. Rows with `valid == False` (eval padding, bad
    samples) are dropped. No batch at all gives features of shape (0, 0).
    """
    forward, restore = _feature_fn(model)
    features: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    try:
        for index, batch in enumerate(batches):
            if max_batches is not None and index >= max_batches:
                break
            batch_labels = batch["label"].reshape(-1).cpu()
            valid = batch.get("valid")
            valid = (
                torch.ones_like(batch_labels, dtype=torch.bool)
                if valid is None
                else valid.reshape(-1).cpu().bool()
            )
            out = forward(batch["image"])
            if out.ndim != 2 or out.shape[0] != batch_labels.shape[0]:
                raise ValueError(
                    f"the feature function returned shape {tuple(out.shape)} for a batch of "
                    f"{batch_labels.shape[0]}; expected ({batch_labels.shape[0]}, D)"
                )
            features.append(out.float().cpu()[valid])
            labels.append(batch_labels[valid].long())
    finally:
        restore()
    if not features:
        return torch.zeros(0, 0), torch.zeros(0, dtype=torch.int64)
    return torch.cat(features), torch.cat(labels)


def gather_features(
    features: torch.Tensor, labels: torch.Tensor, ctx: DistContext
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every rank's (features, labels) concatenated in rank order, returned on every rank.

    Ranks may hold different numbers of rows (zero included). Rows are padded to the longest
    rank's count, all-gathered on the collective's device (the GPU with NCCL, else the CPU) and
    trimmed. Without a process group this returns its inputs.
    """
    if not ctx.distributed:
        return features, labels
    if features.ndim != 2 or labels.ndim != 1 or features.shape[0] != labels.shape[0]:
        raise ValueError(
            f"features (N, D) and labels (N,) expected; got {tuple(features.shape)} and "
            f"{tuple(labels.shape)}"
        )
    device = ctx.torch_device() if dist.get_backend() == "nccl" else torch.device("cpu")
    world = ctx.world_size
    shape = torch.tensor([features.shape[0], features.shape[1]], dtype=torch.int64, device=device)
    shapes = [torch.zeros_like(shape) for _ in range(world)]
    dist.all_gather(shapes, shape)
    counts = [int(s[0]) for s in shapes]
    widths = {int(s[1]) for s, n in zip(shapes, counts, strict=True) if n > 0}
    if len(widths) > 1:
        raise ValueError(f"ranks hold features of different widths {sorted(widths)}")
    width = widths.pop() if widths else int(features.shape[1])
    longest = max(counts)
    if longest == 0:
        return torch.zeros(0, width), torch.zeros(0, dtype=torch.int64)
    padded = torch.zeros(longest, width, dtype=torch.float32, device=device)
    padded_labels = torch.zeros(longest, dtype=torch.int64, device=device)
    if features.shape[0]:  # an empty rank may come as (0, 0): nothing to copy
        padded[: features.shape[0]] = features.to(device=device, dtype=torch.float32)
        padded_labels[: labels.shape[0]] = labels.to(device=device, dtype=torch.int64)
    all_features = [torch.empty_like(padded) for _ in range(world)]
    all_labels = [torch.empty_like(padded_labels) for _ in range(world)]
    dist.all_gather(all_features, padded)
    dist.all_gather(all_labels, padded_labels)
    return (
        torch.cat([f[:n] for f, n in zip(all_features, counts, strict=True)]).cpu(),
        torch.cat([y[:n] for y, n in zip(all_labels, counts, strict=True)]).cpu(),
    )


def _feature_fn(model: nn.Module | FeatureFn) -> tuple[FeatureFn, Callable[[], None]]:
    """The images -> features function, and how to put the model back in its mode."""
    if not (hasattr(model, "forward_features") and hasattr(model, "forward_head")):
        if not callable(model):
            raise TypeError(f"expected a ViT module or a callable, got {type(model).__name__}")
        return model, lambda: None
    was_training = bool(getattr(model, "training", False))
    if isinstance(model, nn.Module):
        model.eval()
    params = model.parameters() if isinstance(model, nn.Module) else iter(())
    first = next(params, None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32

    def forward(images: torch.Tensor) -> torch.Tensor:
        x = images.to(device=device, dtype=dtype, non_blocking=True)
        # Through the top-level call (not forward_features/forward_head), so wrappers that
        # hook it, like DeepSpeed ZeRO-3's parameter gathering, see the whole forward.
        return model(x, pre_logits=True)

    def restore() -> None:
        if isinstance(model, nn.Module):
            model.train(was_training)

    return forward, restore
