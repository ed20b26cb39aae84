"""The peak matmul throughput MFU is measured against: measured once per process and device."""

from __future__ import annotations

import functools
import time

import torch


@functools.lru_cache(maxsize=8)
def measured_peak_flops(
    device: str = "cpu", dtype: str = "float32", size: int | None = None, seconds: float = 0.5
) -> float:
    """FLOP/s of a large square matmul on `device` (2*n^3 per product), best of a short run.

    `size` None: 8192 on a GPU (smaller ones do not fill an H100's tensor cores), 1024 on CPU."""
    torch_dtype = getattr(torch, dtype)
    dev = torch.device(device)
    size = size or (8192 if dev.type == "cuda" else 1024)
    # A private generator: measuring must not move the global RNG (resume is bit-exact).
    gen = torch.Generator(device=dev).manual_seed(0)
    a = torch.randn(size, size, generator=gen, device=dev).to(torch_dtype)
    b = torch.randn(size, size, generator=gen, device=dev).to(torch_dtype)
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
