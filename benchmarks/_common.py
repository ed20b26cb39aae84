"""Helpers the benchmark scripts share: device description, synchronisation, the measured peak
FLOP/s that MFU is taken against, timing of a step loop, memory accounting, and a plain-text
table.

Imports torch and `pipelines.train.peak` (torch only) and nothing else from the project, so the
scripts that use it run on a GPU box with only torch (and timm for the baseline) installed.
"""

from __future__ import annotations

import os
import platform
import resource
import shlex
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # vit_core / pipelines without an installed package
    sys.path.insert(0, str(REPO_ROOT))

from pipelines.train.peak import measured_peak_flops  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
Step = Callable[[torch.Tensor, torch.Tensor], None]


def sync(device: torch.device) -> None:
    """Wait for the device's queued work; the only host sync a timed window makes (twice)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    """'NVIDIA H100 80GB HBM3' or 'Intel(R) Xeon(R) ... (2 CPUs, 2 torch threads)'."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
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


def command_line() -> str:
    """The exact command this process was started with (interpreter included)."""
    return shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))


def peak_flops(device: torch.device, dtype: torch.dtype) -> float:
    """FLOP/s of a large square matmul in `dtype` on `device`, measured now (never cached), the
    same measurement the training loop makes (8192^3 on a GPU, where 1024^3 is launch-bound and
    would under-read the peak and inflate MFU)."""
    seconds = 1.0 if device.type == "cuda" else 0.5
    name = str(dtype).removeprefix("torch.")
    return measured_peak_flops.__wrapped__(str(device), name, seconds=seconds)


def max_rss_bytes() -> int:
    """Peak resident set size of this process so far (Linux reports KiB, macOS bytes)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


def tensor_bytes(tensors: Iterable[Any]) -> int:
    """Bytes held by the tensors among `tensors` (anything else is ignored)."""
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    return sum(tensor_bytes(state.values()) for state in optimizer.state.values())


def one_line(err: BaseException, limit: int = 160) -> str:
    """`TypeName: first line of the message`, shortened: failures go in a table cell."""
    lines = str(err).strip().splitlines()
    text = f"{type(err).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned text columns, numbers right-aligned, one space-padded line per row."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        out = []
        for cell, width in zip(cells, widths, strict=True):
            text = str(cell)
            numeric = text[:1].isdigit() or text[:1] == "-" and text[1:2].isdigit()
            out.append(text.rjust(width) if numeric else text.ljust(width))
        return "  ".join(out).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


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
    step: Step,
    x: torch.Tensor,
    y: torch.Tensor,
    n: int,
    device: torch.device,
) -> tuple[float, float]:
    """Mean (wall, process CPU) seconds per step over n steps; syncs only at the two ends. On a
    shared CPU machine the CPU time is the steadier of the two: time descheduled is not counted."""
    sync(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(n):
        step(x, y)
    sync(device)
    return (time.perf_counter() - start) / n, (time.process_time() - cpu_start) / n
