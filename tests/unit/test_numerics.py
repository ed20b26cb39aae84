"""Thread pinning and the numerics record: the environment cannot change a run's floats."""

from __future__ import annotations

import torch

from pipelines.config.runtime import ClusterSection
from pipelines.numerics import numerics_info, pin_threads, torch_threads


def test_threads_come_from_the_config_not_the_environment(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    assert torch_threads(ClusterSection(cpus_per_worker=2.5), ray_worker=True) == 2
    assert torch_threads(ClusterSection(cpus_per_worker=0.5), ray_worker=True) == 1
    assert torch_threads(ClusterSection(torch_threads=3), ray_worker=True) == 3
    assert torch_threads(ClusterSection(), ray_worker=False) >= 1
    before = torch.get_num_threads()
    try:
        assert pin_threads(ClusterSection(torch_threads=1), ray_worker=False) == 1
        assert torch.get_num_threads() == 1
        info = numerics_info()
        assert info["torch_threads"] == 1 and info["cpu"] and info["cpu_capability"]
    finally:
        torch.set_num_threads(before)
