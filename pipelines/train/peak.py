"""The peak matmul throughput MFU is measured against: measured once per process and device."""

from __future__ import annotations

import functools
import time

import torch


@functools.lru_cache(maxsize=8)
def measured_peak_flops(
    device: str = "cpu", dtype: str = "float32", size: int = 1024, seconds: float = 0.5
) -> float:
    """FLOP/s of a large square matmul on `device` (2*n^3 per product), best of a short run."""
    torch_dtype = getattr(torch, dtype)
    dev = torch.device(device)
    # A private generator: measuring must not move the global RNG (resume is bit-exact).
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(dev, torch_dtype)
    b = torch.randn(size, size, generator=gen).to(dev, torch_dtype)
    flop = 2.0 * size**3
    for _ in range(2):
        a @ b
    _sync(dev)
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        _sync(dev)
        best = max(best, 4 * flop / (time.perf_counter() - start))
    return best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
