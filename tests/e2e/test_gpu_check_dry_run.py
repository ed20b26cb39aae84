"""benchmarks/gpu/check.sh --dry-run: the prepared GPU check's steps (tests/gpu, train_step,
host_syncs, a `vitpipe pretrain --launcher local` run, the report) on the CPU with tiny sizes,
so the script that will run on a lent GPU has run end to end before it gets there."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from train_fixtures import child_env

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_the_gpu_check_runs_end_to_end_on_the_cpu(tmp_path):
    out = tmp_path / "out"
    env = {**child_env(), "OUT": str(out), "PYTHON": sys.executable}
    proc = subprocess.run(
        ["bash", "benchmarks/gpu/check.sh", "--dry-run"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    log = (out / "check.log").read_text() if (out / "check.log").exists() else ""
    assert proc.returncode == 0, proc.stdout + proc.stderr + log[-4000:]
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8, files  # what the device tool brings back
    steps = {line.split("\t")[0]: line.split("\t")[1] for line in (out / "steps.tsv").open()}
    expected = ["shards", "tests_gpu", "train_step", "host_syncs", "pretrain"]
    assert steps == dict.fromkeys(expected, "0"), log[-4000:]

    report = (out / "gpu_report.md").read_text()
    assert report.startswith("# GPU check (DRY RUN")
    assert "| vit_tiny_patch16_32:depth=2 | eager | vit_core |" in report
    assert "Top kernels, vit_core" in report
    assert "is_invalid_grad_norm" in report  # the host sync DeepSpeed's ZeRO step makes
    assert "steady state" in report and "goal data-wait" in report
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["steps"] == 6
    assert summary["mfu"] > 0 and summary["mfu_measured_peak"] > 0
    assert "rated" in summary["mfu_peak"] or "measured" in summary["mfu_peak"]
