"""The Ray-free launchers: `--launcher local` under torchrun (only rank 0 drives the stage and\nchooses the checkpoint the others resume from), and
the same path with tracking off imports neither Ray nor MLflow (the GPU check runs it where
neither is installed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from launch.processes.ports import free_loopback_port

from train_fixtures import child_env, keys_by_epoch, summary, tiny_job, write_yaml

pytestmark = pytest.mark.slow

# Run in a fresh interpreter: importing ray or mlflow (or anything that does) fails loudly.
_BLOCKED_RUN = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("ray", "mlflow"):
            raise ImportError(f"{name} is hidden in this test")
sys.meta_path.insert(0, Block())
from launch.cli import main
code = main(sys.argv[1:])
leaked = sorted({m.split(".")[0] for m in sys.modules} & {"ray", "mlflow"})
print("LEAKED", ",".join(leaked))
sys.exit(code)
"""


def _env() -> dict[str, str]:
    env = child_env()  # torchrun and the local launcher pick their own rendezvous
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[2]), env.get("PYTHONPATH", "")])
    return env


def _torchrun(config: Path, run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    command += ["--master-addr", "127.0.0.1", "--master-port", str(free_loopback_port())]
    command += ["-m", "launch.cli", "pretrain", "-c", str(config), "--launcher", "local"]
    command += ["--run-dir", str(run_dir), "--no-progress", *extra]
    return subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=600)


def test_torchrun_ranks_stop_and_resume_with_rank_0_driving(fractal_shards, tmp_path):
    raw = tiny_job(
        fractal_shards,
        tmp_path,
        train={"total_steps": 4, "record_sample_keys": True},
        checkpoint={"every_n_steps": 2},
        cluster={"num_workers": 2},
    )
    config = write_yaml(raw, tmp_path / "config.yaml")
    run_dir = tmp_path / "run"
    first = _torchrun(config, run_dir, "--stop-at-step", "2")
    assert first.returncode == 0, first.stderr[-3000:]
    assert summary(run_dir)["status"] == "stopped"
    done = _torchrun(config, run_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(results) == 1 and results[0]["status"] == "finished"  # rank 1 prints nothing
    written = summary(run_dir)
    assert written["status"] == "finished" and written["world_size"] == 2
    assert written["steps"] == 4
    # Both ranks continued from the driver's (rank 0's) choice: no sample read twice.
    assert written["resumed_from"].endswith("step_0000002")
    epoch0 = keys_by_epoch(run_dir)[0]
    assert len(epoch0) == len(set(epoch0)) == 4 * 32

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=written["mlflow_tracking_uri"])
    experiment = client.get_experiment_by_name("tests")
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in runs] == [written["mlflow_run_id"]]
    assert runs[0].info.status == "FINISHED"


def test_local_launcher_without_tracking_imports_neither_ray_nor_mlflow(fractal_shards, tmp_path):
    raw = tiny_job(
        fractal_shards,
        tmp_path,
        train={"total_steps": 3, "global_batch_size": 16},
        checkpoint={"every_n_steps": None},
        tracking={"enabled": False},
        cluster={"num_workers": 1},
    )
    config = write_yaml(raw, tmp_path / "config.yaml")
    run_dir = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-c", _BLOCKED_RUN, "pretrain", "-c", str(config)]
        + ["--launcher", "local", "--run-dir", str(run_dir), "--no-progress"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "LEAKED \n" in done.stdout or done.stdout.rstrip().endswith("LEAKED")
    assert summary(run_dir)["status"] == "finished"
