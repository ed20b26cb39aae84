"""Evaluation over a sharded val split: every sample counted exactly once across ranks.

Ranks run the same number of batches (ZeRO-3 forwards are collectives); padded samples carry
`valid = False` and are left out of every sum.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pipelines.distributed import DistContext


@dataclass(frozen=True)
class EvalResult:
    top1: float
    top5: float
    loss: float
    count: int
    confusion: torch.Tensor | None = None  # (true, predicted) counts

    def metrics(self, prefix: str = "val") -> dict[str, float]:
        return {
            f"{prefix}/top1": self.top1,
            f"{prefix}/top5": self.top5,
            f"{prefix}/loss": self.loss,
        }

    def per_class_accuracy(self) -> list[float]:
        if self.confusion is None:
            return []
        totals = self.confusion.sum(dim=1).clamp(min=1)
        return (self.confusion.diag() / totals).tolist()


@torch.no_grad()
def evaluate(
    forward: Callable[[torch.Tensor], torch.Tensor],
    batches: Iterable[dict],
    ctx: DistContext,
    *,
    num_classes: int,
    max_batches: int | None = None,
    confusion: bool = False,
) -> EvalResult:
    sums = torch.zeros(4, dtype=torch.float64)  # loss, top1, top5, count
    matrix = torch.zeros(num_classes, num_classes, dtype=torch.float64) if confusion else None
    for index, batch in enumerate(batches):
        if max_batches is not None and index >= max_batches:
            break
        logits = forward(batch["image"]).float().cpu()
        labels = batch["label"].cpu()
        valid = batch.get("valid", torch.ones_like(labels, dtype=torch.bool)).cpu()
        losses = F.cross_entropy(logits, labels, reduction="none")
        top1, top5 = topk_correct(logits, labels, (1, 5))
        mask = valid.double()
        sums += torch.stack(
            [
                (losses.double() * mask).sum(),
                (top1.double() * mask).sum(),
                (top5.double() * mask).sum(),
                mask.sum(),
            ]
        )
        if matrix is not None:
            predicted = logits.argmax(dim=-1)
            index_pairs = labels[valid] * num_classes + predicted[valid]
            matrix += (
                torch.bincount(index_pairs, minlength=num_classes * num_classes)
                .view(num_classes, num_classes)
                .double()
            )
    reduced = ctx.all_reduce_sum(
        sums.tolist() + (matrix.flatten().tolist() if matrix is not None else [])
    )
    loss_sum, top1_sum, top5_sum, count = reduced[:4]
    if matrix is not None:
        matrix = (
            torch.tensor(reduced[4:], dtype=torch.float64).view(num_classes, num_classes).long()
        )
    n = max(count, 1.0)
    return EvalResult(top1_sum / n, top5_sum / n, loss_sum / n, int(count), matrix)


@torch.no_grad()
def topk_correct(
    logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)
) -> list[torch.Tensor]:
    """Per-sample hit (0/1) for each k; k is capped at the class count."""
    kmax = min(max(ks), logits.shape[-1])
    top = logits.topk(kmax, dim=-1).indices
    hits = top.eq(labels.unsqueeze(-1))
    return [hits[:, : min(k, kmax)].any(dim=-1).float() for k in ks]
