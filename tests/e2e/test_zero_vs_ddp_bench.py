"""Smoke test of benchmarks/zero_vs_ddp.py: 2 gloo ranks under torchrun (the script starts it),
every variant, tiniest settings. It checks that the table prints a ratio to DDP for each variant
and that both sides ran the same precision and compile setting; speed is never asserted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from train_fixtures import child_env

ROOT = Path(__file__).resolve().parents[2]
VARIANTS = ("ddp", "zero0", "zero1", "zero2", "zero3")
TINY = ["--nprocs", "2", "--steps", "2", "--rounds", "1", "--warmup", "1", "--img-size", "32"]
TINY += ["--depth", "1", "--dim", "48", "--micro-batch", "2", "--num-classes", "10"]


@pytest.mark.slow
def test_zero_vs_ddp_cpu_smoke_prints_a_ratio_per_variant(tmp_path):
    out = tmp_path / "rows.json"
    segments = _deepspeed_shm_segments()
    cmd = [sys.executable, str(ROOT / "benchmarks" / "zero_vs_ddp.py"), *TINY, "--json", str(out)]
    # Own session: on a timeout the launcher and its spawned ranks are killed together.
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"timed out after 300 s\n{stdout}{stderr[-4000:]}")
    assert proc.returncode == 0, stdout + stderr[-4000:]
    assert _deepspeed_shm_segments() <= segments  # both ranks' 66 MiB segments were released

    lines = stdout.splitlines()
    header = next(line for line in lines if line.startswith("variant "))
    for column in ("step ms", "img/s", "x DDP", "|dloss| vs DDP"):
        assert column in header
    rows = json.loads(out.read_text())["rows"]
    assert [r["variant"] for r in rows] == list(VARIANTS)
    for row in rows:
        line = next(line for line in lines if line.split()[:1] == [row["variant"]])
        # the row ends: x DDP, paired x DDP, last loss, |dloss| vs DDP
        assert line.split()[-4] == f"{row['ratio']:.3f}"
        assert row["ratio"] > 0 and row["median_ms"] > 0
    assert "torch threads per process: 1" in stdout
    assert "goal ZeRO-1/2 <= 1.15x DDP:" in stdout
    assert "both sides: fp32, compile False" in stdout
    for row in rows[1:]:  # what DeepSpeed was told: fp32 weights, like DDP's
        assert "bf16" not in row["ds_config"] and "fp16" not in row["ds_config"]


def _deepspeed_shm_segments() -> set[str]:
    """This user's DeepSpeed CPU all-reduce segments in /dev/shm."""
    return {p.name for p in Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_{os.getuid()}_*")}
