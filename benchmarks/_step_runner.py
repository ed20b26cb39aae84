"""What the modes of benchmarks/train_step.py share: `StepRunner`, the base of one runner class
per mode (as timm's benchmark.py has), and `Impl`, one implementation's (vit_core or timm) model,
fused AdamW and step (autocast, optional torch.compile) with the helpers that feed and count it.

Imports torch and vit_core (timm only when asked for), so the benchmark still runs where Ray,
DeepSpeed, MLflow and webdataset are absent.
"""

from __future__ import annotations

import abc
import argparse
import gc
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from _measure import DTYPES, Step, cuda_syncs, train_step
from torch import nn

import vit_core
from pipelines.train.peak import sync

IMPLS = ("vit_core", "timm")  # ours, then the baseline
MODES = ("eager", "compiled")
CUDA_BATCH = {"vit_small_patch16": 256, "vit_base_patch16": 256, "vit_large_patch16": 128}
CPU_BATCH = 16


@dataclass
class Impl:
    """One implementation's model, optimizer and step, and what its timed windows measured."""

    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    optimizer_kind: str  # "fused", or "foreach" where the device has no fused AdamW
    step: Step
    wall: list[float] = field(default_factory=list)  # seconds per step, one per window
    cpu: list[float] = field(default_factory=list)  # process CPU seconds per step
    peak_mem: int | None = None


class StepRunner(abc.ABC):
    """One mode of train_step.py. `run` measures, prints its table and fills its part of the
    JSON report; the header, the peak at start and the report file are `main`'s."""

    key: ClassVar[str]  # the report's key for what this mode measured

    def __init__(self, args: argparse.Namespace, device: torch.device, peak: float) -> None:
        self.args, self.device, self.peak = args, device, peak
        self.dtype = DTYPES[args.dtype]

    @abc.abstractmethod
    def run(self, report: dict[str, Any]) -> None: ...

    def batch_size(self, spec: str) -> int:
        """--batch, else a per-model default that fits a GPU (CUDA) or is quick (CPU)."""
        if self.args.batch:
            return self.args.batch
        if self.device.type != "cuda":
            return CPU_BATCH
        config = self.args.configs[spec]
        return CUDA_BATCH.get(spec, 128 if config.dim >= 1024 else 256)

    def build(self, impl: str, config: vit_core.ViTConfig, mode: str) -> Impl:
        """`impl`'s model from `config` on the device, seeded, its optimizer and its step."""
        torch.manual_seed(self.args.seed)
        model = build_model(impl, config).to(self.device).train()
        optimizer, kind = make_optimizer(model, self.device)
        compile_mode = self.args.compile_mode
        forward = torch.compile(model, mode=compile_mode) if mode == "compiled" else model
        step = train_step(forward, optimizer, self.device, self.dtype)
        return Impl(impl, model, optimizer, kind, step)

    def synthetic_batch(
        self, config: vit_core.ViTConfig, batch: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Random images and labels, already on the device: no input pipeline in the step."""
        gen = torch.Generator().manual_seed(self.args.seed)
        x = torch.randn(batch, config.in_chans, config.img_size, config.img_size, generator=gen)
        y = torch.randint(0, config.num_classes, (batch,), generator=gen)
        return x.to(self.device), y.to(self.device)


def precision(dtype: str) -> str:
    """How a step of --dtype runs: fp32 weights, under bf16 autocast or in plain fp32."""
    return "bf16 autocast" if dtype == "bf16" else "fp32"


def build_model(impl: str, config: vit_core.ViTConfig) -> nn.Module:
    if impl == "vit_core":
        return vit_core.VisionTransformer(config)
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    return TimmViT(**vit_core.timm_kwargs(config))  # pretrained=False: built, never downloaded


def make_optimizer(model: nn.Module, device: torch.device) -> tuple[torch.optim.Optimizer, str]:
    """Fused AdamW over every parameter, the same for both implementations (not the trainer's
    `build_optimizer`, whose groups follow each model's `no_weight_decay`); foreach on a device
    without the fused kernel."""
    params = list(model.parameters())
    try:
        return torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05, fused=True), "fused"
    except (RuntimeError, ValueError):
        if device.type == "cuda":
            raise
        return torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05, foreach=True), "foreach"


def count_host_syncs(
    step: Step, x: torch.Tensor, y: torch.Tensor, device: torch.device
) -> int | None:
    """Synchronising CUDA calls made by one (untimed) step; None off CUDA (no step is run). A
    fast path makes none: the host runs ahead and the GPU never starves."""
    if device.type != "cuda":
        return None
    with cuda_syncs(device) as counted:
        step(x, y)
    return counted.count


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
    from torch.profiler import profile

    attr = profiled_time(device)
    with profile(activities=profiler_activities(device)) as prof:
        for _ in range(steps):
            step(x, y)
        sync(device)
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


def profiler_activities(device: torch.device) -> list[Any]:
    from torch.profiler import ProfilerActivity

    return [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])


def profiled_time(device: torch.device) -> str:
    """The profiler event attribute that says where a step's time goes on this device."""
    return "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
