"""One implementation's training step for benchmarks/train_step.py: the model (vit_core or timm),
fused AdamW, the step (autocast, optional torch.compile) and the helpers that feed and count it.

Imports torch and vit_core (timm only when asked for), so the benchmark still runs where Ray,
DeepSpeed, MLflow and webdataset are absent.
"""

from __future__ import annotations

import argparse
import gc
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from _common import DTYPES, Step, train_step
from torch import nn

import vit_core


@dataclass
class Runner:
    """One implementation's model, optimizer and step, and what its timed windows measured."""

    impl: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    step: Step
    wall: list[float] = field(default_factory=list)  # seconds per step, one per window
    cpu: list[float] = field(default_factory=list)  # process CPU seconds per step
    peak_mem: int | None = None


def build_model(impl: str, config: vit_core.ViTConfig) -> nn.Module:
    if impl == "vit_core":
        return vit_core.VisionTransformer(config)
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    return TimmViT(**vit_core.timm_kwargs(config))  # pretrained=False: built, never downloaded


def make_optimizer(model: nn.Module, device: torch.device) -> tuple[torch.optim.Optimizer, str]:
    """Fused AdamW; on a device without the fused kernel, foreach."""
    params = list(model.parameters())
    try:
        return torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05, fused=True), "fused"
    except (RuntimeError, ValueError):
        if device.type == "cuda":
            raise
        return torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05, foreach=True), "foreach"


def build_runner(
    impl: str, config: vit_core.ViTConfig, mode: str, args: argparse.Namespace, device: torch.device
) -> tuple[Runner, str]:
    torch.manual_seed(args.seed)
    model = build_model(impl, config).to(device).train()
    optimizer, kind = make_optimizer(model, device)
    forward = torch.compile(model, mode=args.compile_mode) if mode == "compiled" else model
    step = train_step(forward, optimizer, device, DTYPES[args.dtype])
    return Runner(impl, model, optimizer, step), kind


def count_host_syncs(step: Step, x: torch.Tensor, y: torch.Tensor, device: torch.device):
    """Synchronising CUDA calls made by one (untimed) step, from torch's sync debug mode; None
    off CUDA. A fast path makes none: the host runs ahead and the GPU never starves."""
    if device.type != "cuda":
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step(x, y)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def synthetic_batch(config: vit_core.ViTConfig, batch: int, device: torch.device, seed: int):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, config.in_chans, config.img_size, config.img_size, generator=gen)
    y = torch.randint(0, config.num_classes, (batch,), generator=gen)
    return x.to(device), y.to(device)


def release(device: torch.device) -> None:
    """Free the last pair's models, compiled graphs and cached device memory."""
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def top_kernels(
    step: Step, x: torch.Tensor, y: torch.Tensor, device: torch.device, top: int, steps: int
) -> list[dict[str, Any]]:
    """The `top` kernels (device self time on CUDA, CPU ops elsewhere) of `steps` profiled
    steps: name, ms per step and share of the profiled total."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    attr = "self_device_time_total" if cuda else "self_cpu_time_total"
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step(x, y)
        if cuda:
            torch.cuda.synchronize(device)
    events = [e for e in prof.key_averages() if getattr(e, attr) > 0]
    total = sum(getattr(e, attr) for e in events) or 1.0
    events.sort(key=lambda e: -getattr(e, attr))
    return [
        {
            "name": e.key,
            "ms_per_step": getattr(e, attr) / steps / 1e3,
            "share": getattr(e, attr) / total,
            "calls_per_step": e.count / steps,
        }
        for e in events[:top]
    ]
