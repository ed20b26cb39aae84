"""Smoke tests of the benchmark scripts: they run end to end with their smallest settings and
print their table and ratio. Speed is never asserted (benchmarks/ measures it, tests do not)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from shard_fixtures import write_shard_set

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--models", "vit_tiny_patch16_32:depth=2", "--batch", "4", "--steps", "2"]
TINY += ["--windows", "1", "--warmup", "1", "--threads", "1"]
BANNED = {"ray", "deepspeed", "mlflow", "webdataset"}

# torchvision 0.29 deprecates its image decoders (the loader silences this outside pytest).
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")


def _run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run a benchmark as a user would, with -X importtime so stderr lists every import."""
    cmd = [sys.executable, "-X", "importtime", str(ROOT / "benchmarks" / script), *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    return proc


def _imported(stderr: str) -> set[str]:
    """Top-level packages named in `-X importtime` output."""
    lines = (line.rsplit("|", 1)[-1].strip() for line in stderr.splitlines())
    return {name.split(".")[0] for name in lines if name and " " not in name}


def test_train_step_cpu_smoke_prints_table_with_ratio(tmp_path):
    out = tmp_path / "rows.json"
    proc = _run("train_step.py", "--device", "cpu", "--modes", "eager", *TINY, "--json", str(out))
    lines = proc.stdout.splitlines()
    header = next(line for line in lines if line.startswith("model "))
    for column in ("mode", "impl", "batch", "img/s", "step ms", "MFU", "peak mem", "vit_core/timm"):
        assert column in header
    assert "measured fp32 matmul" in proc.stdout and "TFLOP/s" in proc.stdout
    assert any(line.startswith("command: ") and "train_step.py" in line for line in lines)
    rows = json.loads(out.read_text())["rows"]
    assert [(r["impl"], r["status"]) for r in rows] == [("vit_core", "ok"), ("timm", "ok")]
    assert rows[0]["ratio"] > 0 and rows[0]["mfu"] > 0
    ours = next(line for line in lines if " vit_core " in line and "eager" in line)
    assert ours.split()[-1] == f"{rows[0]['ratio']:.3f}"  # the ratio column is filled
    assert not BANNED & _imported(proc.stderr)


def test_train_step_with_loader_reports_data_wait(tmp_path):
    write_shard_set(tmp_path / "shards", {"train": [12, 12]}, num_classes=5, image_size=40)
    out = tmp_path / "loader.json"
    args = ["--device", "cpu", "--with-loader", str(tmp_path / "shards"), "--workers", "0"]
    proc = _run("train_step.py", *args, *TINY, "--json", str(out))
    assert "data-wait" in proc.stdout
    loader = json.loads(out.read_text())["loader"]
    assert loader["steps"] == 2 and 0.0 <= loader["data_wait_frac"] <= 1.0
    assert loader["loader_stats"]["samples"] >= 3 * 4  # warmup + timed batches
    assert not BANNED & _imported(proc.stderr)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("vit_tiny", "unknown model"),
        ("vit_tiny_patch16:depht=2", "unknown override 'depht'"),
        ("vit_tiny_patch16:depth", "is not FIELD=VALUE"),
    ],
)
def test_train_step_rejects_a_bad_model_spec(spec, message):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "train_step.py"), "--models", spec]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert message in proc.stderr.splitlines()[-1]


def test_plan_scale_prints_seconds_memory_and_the_ratio_to_the_old_plan(tmp_path):
    out = tmp_path / "plan.json"
    small = ["--sizes", "1e5", "--shards", "100", "--world", "8", "--workers", "2"]
    small += ["--resume-world", "7", "--micro-batch", "4", "--baseline-max", "1e5"]
    proc = _run("plan_scale.py", *small, "--json", str(out))
    header = next(line for line in proc.stdout.splitlines() if line.startswith("samples "))
    for column in ("seconds", "peak RSS MB", "worker gets MB", "0.2/new seconds"):
        assert column in header
    rows = json.loads(out.read_text())["rows"]
    assert [r["step"] for r in rows] == ["plan", "consumer", "resume"]
    assert all(isinstance(r["new"], dict) and isinstance(r["old"], dict) for r in rows)
