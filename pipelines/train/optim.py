"""Optimizer construction: no weight decay on biases, norms, position embeddings and the class
token; optional layer-wise lr decay for fine-tuning. Each group carries `lr_scale`, which the
schedule multiplies in, so lr is always `base_lr * lr_scale * lr_factor(step)`."""

from __future__ import annotations

import re

import torch
from torch import nn

from pipelines.config import OptimSection, StageConfig

_BLOCK_RE = re.compile(r"(?:^|\.)blocks\.(\d+)\.")
_STEM_PREFIXES = ("cls_token", "pos_embed", "patch_embed")


def layer_id(name: str, depth: int) -> int:
    """0 for the stem, i + 1 for block i, depth + 1 for the final norm and the head."""
    match = _BLOCK_RE.search(name)
    if match:
        return int(match.group(1)) + 1
    if name.split(".")[-1] in _STEM_PREFIXES or name.startswith(_STEM_PREFIXES):
        return 0
    return depth + 1


def param_groups(model: nn.Module, optim: OptimSection) -> list[dict]:
    skip = set(getattr(model, "no_weight_decay", lambda: set())())
    depth = getattr(getattr(model, "config", None), "depth", 0)
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = param.ndim <= 1 or name in skip or name.endswith(".bias")
        layer = layer_id(name, depth) if optim.layer_decay else 0
        key = (layer, no_decay)
        if key not in groups:
            scale = optim.layer_decay ** (depth + 1 - layer) if optim.layer_decay else 1.0
            groups[key] = {
                "params": [],
                "weight_decay": 0.0 if no_decay else optim.weight_decay,
                "lr_scale": scale,
                "lr": optim.lr * scale,
            }
        groups[key]["params"].append(param)
    return [groups[key] for key in sorted(groups)]


def uses_cpu_adam(config: StageConfig) -> bool:
    """ZeRO-Offload of Adam/AdamW steps on the CPU through DeepSpeed's CPUAdam (AVX kernels;
    torch's CPU AdamW is several times slower there); offloaded SGD stays torch's."""
    return config.deepspeed.offload_optimizer and config.optim.name in ("adam", "adamw")


def build_optimizer(
    model: nn.Module, optim: OptimSection, *, on_gpu: bool, cpu_adam: bool = False
) -> torch.optim.Optimizer:
    """`cpu_adam`: DeepSpeed's CPUAdam (a C++ op it JIT-compiles on first use) for an offloaded
    optimizer state; see `uses_cpu_adam`."""
    groups = param_groups(model, optim)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    fused = optim.fused if optim.fused is not None else on_gpu
    betas = (optim.betas[0], optim.betas[1])
    if cpu_adam and optim.name in ("adam", "adamw"):
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(
            groups, lr=optim.lr, betas=betas, eps=optim.eps, adamw_mode=optim.name == "adamw"
        )
    if optim.name == "adamw":
        return torch.optim.AdamW(
            groups, lr=optim.lr, betas=betas, eps=optim.eps, fused=fused or None
        )
    if optim.name == "adam":
        return torch.optim.Adam(
            groups, lr=optim.lr, betas=betas, eps=optim.eps, fused=fused or None
        )
    return torch.optim.SGD(groups, lr=optim.lr, momentum=optim.momentum, fused=fused or None)


def set_lr(optimizer: torch.optim.Optimizer, base_lr: float, factor: float) -> float:
    """Apply the schedule to every group; returns the lr of a scale-1 group (for logging)."""
    for group in optimizer.param_groups:
        group["lr"] = base_lr * group.get("lr_scale", 1.0) * factor
    return base_lr * factor
