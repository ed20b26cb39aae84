"""Mixup / CutMix on a batch, as soft targets; deterministic given a `torch.Generator`.

Batch-level mixing as in timm's `Mixup(mode="batch")`: one lambda per batch, each sample paired
with the batch in reverse order. It runs in the training step rather than in the loader because it
needs a whole batch, and the trainer seeds the generator from (seed, step) so that a resumed run
mixes exactly as the uninterrupted one did.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def smooth_one_hot(labels: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """int64 (B,) -> float32 (B, num_classes): 1 - smoothing + smoothing/C on the label, else smoothing/C."""
    off = smoothing / num_classes
    targets = torch.full(
        (labels.shape[0], num_classes), off, dtype=torch.float32, device=labels.device
    )
    return targets.scatter_(1, labels.view(-1, 1), 1.0 - smoothing + off)


def mix_batch(
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    num_classes: int,
    mixup_alpha: float = 0.0,
    cutmix_alpha: float = 0.0,
    label_smoothing: float = 0.0,
    generator: torch.Generator,
    switch_prob: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (B, C, H, W), int labels (B,)) -> (mixed images, soft targets (B, num_classes)).

    With both alphas > 0, CutMix is chosen with probability `switch_prob`, else Mixup; with both
    0, the images are returned unchanged with (smoothed) one-hot targets. Every target row sums
    to 1. The inputs are not modified.
    """
    if mixup_alpha < 0 or cutmix_alpha < 0:
        raise ValueError(f"mixup_alpha={mixup_alpha} and cutmix_alpha={cutmix_alpha} must be >= 0")
    targets = smooth_one_hot(labels, num_classes, label_smoothing)
    if mixup_alpha == 0 and cutmix_alpha == 0:
        return images, targets
    # numpy has a seeded Beta sampler; torch.distributions.Beta takes no generator.
    seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    rng = np.random.default_rng(seed)
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha == 0 or rng.random() < switch_prob)
    lam = float(
        rng.beta(cutmix_alpha, cutmix_alpha) if use_cutmix else rng.beta(mixup_alpha, mixup_alpha)
    )
    partner = images.flip(0)
    if use_cutmix:
        height, width = images.shape[-2:]
        cut = math.sqrt(1.0 - lam)
        cut_h, cut_w = int(height * cut), int(width * cut)
        cy, cx = int(rng.integers(height)), int(rng.integers(width))
        y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
        x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
        mixed = images.clone()
        mixed[..., y0:y1, x0:x1] = partner[..., y0:y1, x0:x1]
        lam = 1.0 - (y1 - y0) * (x1 - x0) / (height * width)  # the area actually pasted
    else:
        mixed = images * lam + partner * (1.0 - lam)
    return mixed, targets * lam + targets.flip(0) * (1.0 - lam)
