"""How the benchmarks time a training step and what they divide by: the step itself, a timed
window, the peaks MFU is taken against, memory, and host syncs.

The device name, the math-dtype rule, `sync` and the peaks come from `pipelines.train.peak`, the
module the training loop takes them from, so a benchmark's MFU is the trainer's. Imports torch
and that module (torch only) and nothing else from the project, so the scripts that use it run
on a GPU machine with only torch (and timm for the baseline) installed.
"""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # vit_core / pipelines without an installed package
    sys.path.insert(0, str(REPO_ROOT))

from pipelines.train.peak import (  # noqa: E402
    Peaks,
    device_name,
    math_dtype,
    measure_matmul_flops,
    resolve_peaks,
    sync,
)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
Step = Callable[[torch.Tensor, torch.Tensor], None]


def describe_device(device: torch.device) -> str:
    """`device_name`, and on a CPU what a reader needs to compare runs: the CPU model and how
    many cores and torch threads there were ('AMD EPYC ... (2 CPUs, 1 torch threads)')."""
    if device.type == "cuda":
        return device_name(device)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name} ({os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads)"


def peak_flops(device: torch.device, dtype: torch.dtype) -> float:
    """FLOP/s of a large square matmul in `dtype` on `device`, measured now (never cached: a
    benchmark measures at start and end), the same measurement the training loop makes."""
    seconds = 1.0 if device.type == "cuda" else 0.5
    return measure_matmul_flops(device, dtype, seconds=seconds)


def peaks(device: torch.device, dtype: torch.dtype, measured: float) -> Peaks:
    """The training loop's two peaks for a step of fp32 weights under `dtype` autocast (fp32:
    none): `mfu` against the chip's rated peak, `mfu_measured_peak` against `measured`."""
    on_gpu = device.type == "cuda"
    math = math_dtype("fp32", autocast=dtype != torch.float32, on_gpu=on_gpu)
    return resolve_peaks(describe_device(device), math, measured=measured)


def train_step(
    forward: Callable[[torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    dtype: torch.dtype,
) -> Step:
    """One benchmarked training step: forward (autocast unless fp32) + cross-entropy + backward +
    optimizer step + `set_to_none` zeroing, with no host sync of its own."""
    amp = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        with amp:
            loss = torch.nn.functional.cross_entropy(forward(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def timed(
    step: Step, x: torch.Tensor, y: torch.Tensor, n: int, device: torch.device
) -> tuple[float, float]:
    """Mean (wall, process CPU) seconds per step over n steps; syncs only at the two ends. On a
    shared CPU machine the CPU time is the steadier of the two: time descheduled is not counted."""
    sync(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(n):
        step(x, y)
    sync(device)
    return (time.perf_counter() - start) / n, (time.process_time() - cpu_start) / n


@dataclass
class SyncCount:
    """What `cuda_syncs` counted; None off CUDA (every tensor is a host tensor there)."""

    count: int | None = None


@contextlib.contextmanager
def cuda_syncs(device: torch.device) -> Iterator[SyncCount]:
    """Count the synchronising CUDA calls made inside, from torch's sync debug mode: the ground
    truth of how often the host waited for the GPU. A fast path makes none."""
    counted = SyncCount()
    if device.type != "cuda":
        yield counted
        return
    sync(device)  # what was queued before is not counted
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield counted
        finally:
            torch.cuda.set_sync_debug_mode("default")
    counted.count = sum("synchroniz" in str(w.message) for w in caught)


def max_rss_bytes() -> int:
    """Peak resident set size of this process so far (Linux reports KiB, macOS bytes)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


def tensor_bytes(tensors: Iterable[Any]) -> int:
    """Bytes held by the tensors among `tensors` (anything else is ignored)."""
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    return sum(tensor_bytes(state.values()) for state in optimizer.state.values())
