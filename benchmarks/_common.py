"""Helpers the benchmark scripts share: device description, synchronisation, the peaks MFU is
taken against (the chip's rated dense peak and a matmul measured now), timing of a step loop,
memory accounting, and the report every script prints and writes (command, machine, load,
table, JSON).

Imports torch and `pipelines.train.peak` (torch only) and nothing else from the project, so the
scripts that use it run on a GPU box with only torch (and timm for the baseline) installed.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # vit_core / pipelines without an installed package
    sys.path.insert(0, str(REPO_ROOT))

from pipelines.train.peak import Peaks, measure_matmul_flops, resolve_peaks  # noqa: E402

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
    return measure_matmul_flops(device, dtype, seconds=seconds)


def peaks(device: torch.device, dtype: torch.dtype, measured: float) -> Peaks:
    """`mfu` against the chip's rated dense peak for `dtype` (the measured one where the chip is
    not in `pipelines.train.peak.RATED_TFLOPS`, e.g. any CPU), `mfu_measured_peak` against
    `measured`: the training loop's two numbers."""
    name = str(dtype).removeprefix("torch.")
    math = {"bfloat16": "bf16", "float16": "fp16"}.get(name, "fp32")
    if math == "fp32" and device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32:
        math = "tf32"
    return resolve_peaks(device_name(device), math, measured=measured)


def release_deepspeed_shm(rank: int) -> None:
    """Remove the name of this rank's DeepSpeed CPU all-reduce segment. With LOCAL_SIZE set (as
    the distributed benchmarks set it, and vitpipe's launchers do not), DeepSpeed's shm_comm op
    creates a 66 MiB segment per rank,
    `/dev/shm/deepspeed_allreduce_buffer_<uid>_<MASTER_ADDR>_<MASTER_PORT>_<rank>`, and never
    removes it: each run would leave its segments in memory until a reboot. Called once the
    benchmark is over (every peer mapped it at start-up); the memory goes when the last process
    holding it exits. The name is exact, so no other run's segment is touched."""
    addr, port = os.environ.get("MASTER_ADDR", ""), os.environ.get("MASTER_PORT", "")
    name = f"deepspeed_allreduce_buffer_{os.getuid()}_{addr}_{port}_{rank}"
    Path("/dev/shm", name).unlink(missing_ok=True)


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


def load_average() -> tuple[float, float, float] | None:
    return os.getloadavg() if hasattr(os, "getloadavg") else None


def run_header(device: torch.device, **versions: str) -> dict[str, Any]:
    """Print, and return for the JSON report, what a reader needs to trust the numbers: the
    exact command, the device, the library versions and the load at start."""
    report: dict[str, Any] = {
        "command": command_line(),
        "device": device_name(device),
        "torch": torch.__version__,
        **versions,
        "load_avg": load_average(),
    }
    print(f"command: {report['command']}")
    libs = " | ".join(f"{k} {v}" for k, v in {"torch": torch.__version__, **versions}.items())
    print(f"device: {report['device']} | {libs}")
    if report["load_avg"]:
        print("load average (1/5/15 min): " + " ".join(f"{v:.2f}" for v in report["load_avg"]))
    return report


def finish_report(report: dict[str, Any], started: float, json_path: Path | None) -> None:
    """The elapsed time, the load at the end, and the JSON report where asked for."""
    report["total_s"] = time.perf_counter() - started
    report["load_avg_end"] = load_average()
    end = report["load_avg_end"]
    load = " | load at end " + " ".join(f"{v:.2f}" for v in end) if end else ""
    print(f"total time {report['total_s']:.1f} s{load}")
    if json_path:
        write_json(report, json_path)
        print(f"wrote {json_path}")


def write_json(report: dict[str, Any], path: Path) -> None:
    """Atomically: a reader (or a timeout) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str) + "\n")
    tmp.replace(path)


def compare_windows(times: dict[str, list[float]], baseline: str) -> dict[str, dict[str, float]]:
    """Per name: median, min and max window time, `ratio` (median / the baseline's median) and
    `paired_ratio` (median over rounds of window / the baseline's window of the same round:
    adjacent windows see the same machine, so drift cancels). Lower is better."""
    base = times[baseline]
    out = {}
    for name, windows in times.items():
        median = statistics.median(windows)
        paired = [a / b for a, b in zip(windows, base, strict=True)]
        out[name] = {
            "median_s": median,
            "min_s": min(windows),
            "max_s": max(windows),
            "ratio": median / statistics.median(base),
            "paired_ratio": statistics.median(paired),
        }
    return out


def progress(message: str) -> None:
    """A timestamped progress line on stderr (stdout holds the report)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def print_goal(goal: str, ratios: dict[str, float], limit: float) -> None:
    """`goal <text>: met (a 0.98, b 1.02)` when every ratio is <= limit, else `NOT met`."""
    if ratios:
        met = all(r <= limit for r in ratios.values())
        shown = ", ".join(f"{name} {r:.3f}" for name, r in ratios.items())
        print(f"goal {goal}: {'met' if met else 'NOT met'} ({shown})")
