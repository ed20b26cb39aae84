"""What decides the exact floats of a CPU run besides code, data and seeds, pinned or recorded.

On a CPU, fp32 results are bit-identical from run to run only for the same
- intra-op thread count: matmuls (MKL), oneDNN kernels and ATen reductions split their sums by
  thread, so 1 and 2 threads round differently. Left alone, torch takes `OMP_NUM_THREADS` from
  the environment (Ray sets it to the worker's CPUs only when it is unset), else every core;
  `pin_threads` sets it from the config instead, so the environment cannot change the numbers;
- CPU instruction set and vendor: ATen picks AVX2 or AVX-512 kernels, MKL and oneDNN pick code
  paths per CPU (Intel and AMD differ), each with its own summation order. Recorded by
  `numerics_info()` in summary.json, so two runs can be compared knowingly.
Machine load changes neither (static work split), so a busy machine is slower, not different.
"""

from __future__ import annotations

import functools
import math
import os
import platform
from typing import Any

import torch

from pipelines.config.runtime import ClusterSection


def torch_threads(cluster: ClusterSection, *, ray_worker: bool) -> int:
    """`cluster.torch_threads`, else the worker's CPUs on Ray, else every core of this process."""
    if cluster.torch_threads is not None:
        return cluster.torch_threads
    if ray_worker:
        return max(1, math.floor(cluster.cpus_per_worker))
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def pin_threads(cluster: ClusterSection, *, ray_worker: bool) -> int:
    """Set torch's intra-op threads (MKL and OpenMP follow) for this process; returns them."""
    threads = torch_threads(cluster, ray_worker=ray_worker)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


@functools.cache
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def numerics_info() -> dict[str, Any]:
    """What the exact numbers of this process depend on besides code, data and seeds."""
    return {
        "torch_threads": torch.get_num_threads(),
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
    }
