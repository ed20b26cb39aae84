"""The peaks MFU is taken against: the chip's rated dense peak (what published MFU figures use)
and a large matmul measured on the device (what this machine really reaches).

`mfu` divides by the rated peak of the dtype the matmuls run in (`train.peak_tflops` overrides
it; a chip missing from the table falls back to the measured peak); `mfu_measured_peak` divides
by the measured one. Imports torch only, so the benchmarks use it on a machine without the rest:
`device_name`, `math_dtype`, `sync` and the peaks are theirs too, never a second copy.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import torch

# Dense (no 2:4 sparsity) tensor-core TFLOP/s from NVIDIA's datasheets, by the substring of
# `torch.cuda.get_device_name()` that names the part; the first match wins, so the specific
# names (NVL, PCIe) come before the plain one (SXM). "fp32" is the plain CUDA-core rate, which
# fp32 matmuls run at unless TF32 is allowed.
RATED_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H200 NVL", {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0}),
    ("H200", {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9}),
    ("H100 NVL", {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0}),
    ("H100 PCIe", {"bf16": 756.5, "fp16": 756.5, "tf32": 378.0, "fp32": 51.2}),
    ("H100", {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9}),
    ("A100", {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    ("L40S", {"bf16": 362.1, "fp16": 362.1, "tf32": 183.0, "fp32": 91.6}),
)
MATH_DTYPES = ("bf16", "fp16", "tf32", "fp32")
_TORCH_NAMES = {"bf16": "bfloat16", "fp16": "float16", "tf32": "float32", "fp32": "float32"}


def rated_peak_flops(device_name: str, dtype: str | torch.dtype) -> float | None:
    """The rated dense peak FLOP/s of one chip for matmuls in `dtype` (bf16, fp16, tf32, fp32
    or a torch dtype); None for a device the table does not know (any CPU)."""
    key = _dtype_key(dtype)
    for part, rates in RATED_TFLOPS:
        if part.lower() in device_name.lower():
            return rates[key] * 1e12
    return None


def math_dtype(precision: str, *, autocast: bool, on_gpu: bool) -> str:
    """The dtype the model's matmuls run in: bf16/fp16 weights, bf16 autocast, else fp32 (tf32
    where torch allows it on a GPU)."""
    if precision in ("bf16", "fp16"):
        return precision
    if autocast:
        return "bf16"
    if on_gpu and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "fp32"


@dataclass(frozen=True)
class Peaks:
    """Per-device peaks; `rated` is what `mfu` divides by, `source` says where it came from."""

    rated: float
    measured: float
    source: str

    def mfu(self, flops_per_s: float, devices: int = 1) -> dict[str, float]:
        """`mfu` and `mfu_measured_peak` for `flops_per_s` achieved over `devices` devices."""
        return {
            "mfu": flops_per_s / (self.rated * devices),
            "mfu_measured_peak": flops_per_s / (self.measured * devices),
        }


def resolve_peaks(
    device_name: str, dtype: str, *, measured: float, override_tflops: float | None = None
) -> Peaks:
    """`override_tflops` (train.peak_tflops) first, then the rated table, then the measured."""
    if override_tflops:
        return Peaks(override_tflops * 1e12, measured, "train.peak_tflops")
    rated = rated_peak_flops(device_name, dtype)
    if rated is not None:
        return Peaks(rated, measured, f"rated {dtype} peak of {device_name}")
    return Peaks(measured, measured, f"measured matmul (no rated {dtype} peak for {device_name})")


def device_name(device: str | torch.device) -> str:
    """The name the rated table is matched against: the CUDA part name, else "cpu"."""
    dev = torch.device(device)
    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"


def measure_matmul_flops(
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "float32",
    size: int | None = None,
    seconds: float = 0.5,
) -> float:
    """FLOP/s of a large square matmul on `device` (2*n^3 per product), best of a short run.

    `size` None: 8192 on a GPU (smaller ones do not fill an H100's tensor cores), 1024 on CPU.
    `dtype` may be a torch dtype, its name ("bfloat16") or a math dtype ("bf16", "tf32")."""
    dev = torch.device(device)
    torch_dtype = dtype if isinstance(dtype, torch.dtype) else _torch_dtype(dtype)
    size = size or (8192 if dev.type == "cuda" else 1024)
    # A private generator: measuring must not move the global RNG (resume is bit-exact).
    gen = torch.Generator(device=dev).manual_seed(0)
    a = torch.randn(size, size, generator=gen, device=dev).to(torch_dtype)
    b = torch.randn(size, size, generator=gen, device=dev).to(torch_dtype)
    flop = 2.0 * size**3
    for _ in range(2):
        a @ b
    sync(dev)
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        sync(dev)
        best = max(best, 4 * flop / (time.perf_counter() - start))
    return best


@functools.lru_cache(maxsize=8)
def measured_peak_flops(
    device: str = "cpu", dtype: str = "float32", size: int | None = None, seconds: float = 0.5
) -> float:
    """`measure_matmul_flops`, once per process and (device, dtype): the training loop's peak."""
    return measure_matmul_flops(device, dtype, size, seconds)


def peak_memory_bytes(device: torch.device) -> int | None:
    """The most device memory this process's tensors held at once; None off CUDA."""
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def _dtype_key(dtype: str | torch.dtype) -> str:
    if isinstance(dtype, torch.dtype):
        names = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
        if dtype not in names:
            raise ValueError(f"no rated peak for dtype {dtype}")
        return names[dtype]
    aliases = {"bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float32": "fp32"}
    key = aliases.get(dtype, dtype)
    if key not in MATH_DTYPES:
        raise ValueError(f"dtype {dtype!r}: allowed are {', '.join(MATH_DTYPES)}")
    return key


def _torch_dtype(name: str) -> torch.dtype:
    return getattr(torch, _TORCH_NAMES.get(name, name))


def sync(device: str | torch.device) -> None:
    """Wait for the device's queued work: a timer read before it measures the launch, not the
    kernels. A no-op off CUDA, where ops run synchronously."""
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
