"""The two pretraining losses: softmax cross-entropy, and sigmoid BCE as in big_vision."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def classification_loss(
    logits: torch.Tensor, targets: torch.Tensor, *, kind: str, label_smoothing: float = 0.0
) -> torch.Tensor:
    """`targets` are class ids (B,) or soft targets (B, C) from Mixup/CutMix."""
    logits = logits.float()
    num_classes = logits.shape[-1]
    if targets.ndim == 1:
        if kind == "softmax_ce":
            return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
        targets = F.one_hot(targets, num_classes).to(logits.dtype)
        if label_smoothing:
            targets = targets * (1 - label_smoothing) + label_smoothing / num_classes
    if kind == "softmax_ce":
        return torch.sum(-targets * F.log_softmax(logits, dim=-1), dim=-1).mean()
    if kind == "sigmoid_bce":
        # big_vision sums over classes and averages over the batch.
        per_class = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        return per_class.sum(dim=-1).mean()
    raise ValueError(f"loss {kind!r} is not supported; allowed: softmax_ce, sigmoid_bce")
