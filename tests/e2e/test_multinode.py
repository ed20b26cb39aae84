"""`vitpipe submit` / `vitpipe jobs` against a real 2-node Ray cluster on this machine
(`tests/jobs_cluster.py` says how it is started and torn down)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from jobs_cluster import jobs_cluster

from launch.cli import main
from launch.processes.ports import free_loopback_port

from train_fixtures import summary, tiny_job, write_yaml

pytestmark = [pytest.mark.multinode, pytest.mark.slow]


@pytest.fixture(scope="module")
def jobs_url(ray_local) -> Iterator[str]:
    """The Jobs API URL of a 2-node cluster (head + 1 worker node, 1 CPU each)."""
    with jobs_cluster(worker_nodes=1) as url:
        yield url


def test_submit_trains_across_two_nodes(jobs_url, fractal_shards, tmp_path, capsys):
    raw = tiny_job(
        fractal_shards,
        tmp_path,
        train={"total_steps": 4},
        checkpoint={"every_n_steps": None},
        cluster={"num_workers": 2},
        data={"num_workers": 0},  # loader processes cost a minute on 2 loaded cores
    )
    config = write_yaml(raw, tmp_path / "tiny.yaml")
    run_dir = tmp_path / "run"
    job_id = f"vitpipe-test-{os.getpid()}-{int(time.time())}"

    code = main(
        ["submit", "-c", str(config), "--address", jobs_url, "--run-dir", str(run_dir)]
        + ["--job-id", job_id]
    )
    out = capsys.readouterr()
    assert code == 0, out.err[-3000:] + out.out[-6000:]
    assert f"submitted job {job_id}" in out.out
    assert out.out.rstrip().endswith(f"job {job_id} SUCCEEDED")
    assert '"status": "finished"' in out.out  # the job's own output, followed live
    assert "warning" not in out.err  # 127.0.0.1 is not exposed

    written = summary(run_dir)
    assert written["status"] == "finished"
    assert written["world_size"] == 2
    assert written["steps"] == 4

    from ray.util.state import list_actors, list_nodes

    nodes = {n.node_id for n in list_nodes(address=jobs_url) if n.state == "ALIVE"}
    workers = list_actors(address=jobs_url, filters=[("class_name", "=", "RayTrainWorker")])
    assert len(nodes) == 2
    assert len(workers) == 2, workers
    assert {w.node_id for w in workers} == nodes  # one worker per node

    assert main(["jobs", "list", "--address", jobs_url]) == 0
    listed = [line for line in capsys.readouterr().out.splitlines() if job_id in line]
    assert len(listed) == 1 and "SUCCEEDED" in listed[0], listed

    assert main(["jobs", "status", job_id, "--address", jobs_url]) == 0
    assert capsys.readouterr().out.startswith(f"{job_id} SUCCEEDED")

    assert main(["jobs", "logs", job_id, "--address", jobs_url]) == 0
    logs = capsys.readouterr().out
    assert '"status": "finished"' in logs

    assert main(["jobs", "stop", job_id, "--address", jobs_url]) == 0
    assert "not running" in capsys.readouterr().out

    again = ["submit", "-c", str(config), "--address", jobs_url, "--job-id", job_id, "--no-wait"]
    assert main(again) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already exists" in err[0], err

    for action in ("status", "logs", "stop"):
        assert main(["jobs", action, "no-such-job", "--address", jobs_url]) == 1
        err = capsys.readouterr().err.strip()
        assert err == f"error: no job 'no-such-job' on {jobs_url}", err


def _random_export(out: Path, num_classes: int) -> Path:
    """A tiny ViT export (untrained weights) that `vitpipe eval --from` loads."""
    import torch

    from pipelines.checkpoint.export import export_info, save_model
    from vit_core.config import ViTConfig
    from vit_core.model import VisionTransformer

    torch.manual_seed(0)
    config = ViTConfig(
        img_size=32, patch_size=8, dim=32, depth=1, num_heads=2, num_classes=num_classes
    )
    model = VisionTransformer(config).eval()
    save_model(model, out, info=export_info(model, classes=[f"c{i}" for i in range(num_classes)]))
    return out


def test_submit_eval_and_finetune_and_follow_their_status(
    jobs_url, fractal_shards, tmp_path, capsys
):
    raw = tiny_job(fractal_shards, tmp_path, data={"num_workers": 0})
    config = write_yaml(raw, tmp_path / "tiny.yaml")
    export = _random_export(tmp_path / "export", num_classes=10)
    stamp = f"{os.getpid()}-{int(time.time())}"

    eval_id = f"vitpipe-eval-{stamp}"
    code = main(
        ["submit", "-c", str(config), "--address", jobs_url, "--stage", "eval"]
        + ["--from", str(export), "--run-dir", str(tmp_path / "eval"), "--job-id", eval_id]
    )
    out = capsys.readouterr()
    assert code == 0, out.err[-3000:] + out.out[-3000:]
    assert out.out.rstrip().endswith(f"job {eval_id} SUCCEEDED")
    written = summary(tmp_path / "eval")
    assert written["stage"] == "eval" and written["status"] == "finished"
    assert written["source"] == str(export)

    assert main(["jobs", "logs", eval_id, "--follow", "--address", jobs_url]) == 0
    assert capsys.readouterr().out.rstrip().endswith(f"job {eval_id} SUCCEEDED")

    # A storage URI reaches the job as written; this one holds no checkpoint, so the job fails
    # and following it exits non-zero with the job's status.
    missing = "s3://vitpipe-test/nothing-here/checkpoints/step_0000004"
    tune_id = f"vitpipe-finetune-{stamp}"
    code = main(
        ["submit", "-c", str(config), "--address", jobs_url, "--stage", "finetune"]
        + ["--from", missing, "--job-id", tune_id, "--no-wait"]
    )
    assert code == 0 and f"--from {missing} " in capsys.readouterr().out
    assert main(["jobs", "logs", tune_id, "--follow", "--address", jobs_url]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: job {tune_id} FAILED"), err


def test_bad_config_is_refused_before_submission(jobs_url, tmp_path, capsys):
    assert main(["jobs", "list", "--address", jobs_url]) == 0
    before = capsys.readouterr().out
    raw = tiny_job(tmp_path / "shards", tmp_path, train={"total_steps": "four"})
    config = write_yaml(raw, tmp_path / "bad.yaml")

    code = main(["submit", "-c", str(config), "--address", jobs_url, "--job-id", "never-sent"])
    out = capsys.readouterr()
    assert code == 2
    assert out.err.strip().splitlines() == [
        "error: train.total_steps: expected a number, got the string 'four'"
    ]
    assert "submitted" not in out.out

    assert main(["jobs", "list", "--address", jobs_url]) == 0
    after = capsys.readouterr().out
    assert "never-sent" not in after
    assert len(after.splitlines()) == len(before.splitlines())


def test_a_client_without_the_token_is_refused_in_one_line(jobs_url, tmp_path):
    import requests

    mode = requests.get(f"{jobs_url}/api/authentication_mode", timeout=10).json()
    if mode.get("authentication_mode") != "token":
        pytest.skip("the test cluster runs without token authentication")
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}
    done = subprocess.run(
        [sys.executable, "-m", "launch.cli", "jobs", "list", "--address", jobs_url],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: the Ray Jobs API at {jobs_url} requires token authentication and got no "
        "token: set RAY_AUTH_MODE=token and the cluster's token in RAY_AUTH_TOKEN (or a file "
        "in RAY_AUTH_TOKEN_PATH, default ~/.ray/auth_token)"
    ], done.stderr


def test_unreachable_address_is_one_line(tmp_path, capsys):
    config = write_yaml(tiny_job(tmp_path / "shards", tmp_path), tmp_path / "tiny.yaml")
    address = f"http://127.0.0.1:{free_loopback_port()}"
    assert main(["submit", "-c", str(config), "--address", address]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: cannot reach the Ray Jobs API at {address}")


def test_public_http_address_warns():
    from launch.jobs.api import exposure_warning

    assert exposure_warning("http://127.0.0.1:8265") is None
    assert exposure_warning("http://10.1.2.3:8265") is None
    assert exposure_warning("http://localhost:8265") is None
    assert exposure_warning("https://203.0.113.7:8265") is None
    warning = exposure_warning("http://8.8.8.8:8265")
    assert warning and "CVE-2023-48022" in warning and "\n" not in warning


def test_two_nodes_checkpoint_and_resume_through_the_object_store(
    jobs_url, s3_store, fractal_shards, tmp_path, capsys
):
    """No shared disk: each node stages in its own scratch; checkpoints, metrics and summary
    reach the other node and the driver only through run storage (s3://)."""
    run = f"{s3_store}/twonode-{os.getpid()}-{int(time.time())}"
    scratch = tmp_path / "scratch"
    raw = tiny_job(
        fractal_shards,
        tmp_path,
        train={"total_steps": 2},
        schedule={"warmup_steps": 1},
        checkpoint={"every_n_steps": 2},
        tracking={"enabled": False},
        cluster={"num_workers": 2, "local_scratch": str(scratch / "{node_id}")},
        data={"num_workers": 0},
    )
    first = write_yaml(raw, tmp_path / "first.yaml")
    assert main(["submit", "-c", str(first), "--address", jobs_url, "--run-dir", run]) == 0
    raw["train"]["total_steps"] = 4
    second = write_yaml(raw, tmp_path / "second.yaml")
    assert main(["submit", "-c", str(second), "--address", jobs_url, "--run-dir", run]) == 0
    capsys.readouterr()

    from pipelines.storage import locate

    written = locate(run).join("summary.json").read_json()
    assert written["status"] == "finished" and written["steps"] == 4
    assert written["resumed_from"] == f"{run}/checkpoints/step_0000002"
    nodes = written["nodes"]  # Ray node ids: both local nodes report 127.0.0.1
    assert len(nodes) == 2 and sorted(sum(nodes.values(), [])) == [0, 1], nodes
    for node, ranks in nodes.items():  # a node's scratch holds only its own ranks' files
        staged = {p.parent.parent.name for p in (scratch / node).rglob("COMMITTED.json")}
        assert staged == {f"rank{r:05d}" for r in ranks}, (node, staged)
        written = {p.name for p in (scratch / node).rglob("zero_pp_rank_*")}
        assert written == {f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in ranks}

    tune_id = f"vitpipe-finetune-s3-{os.getpid()}"
    code = main(
        ["submit", "-c", str(second), "--address", jobs_url, "--stage", "finetune"]
        + ["--from", f"{run}/checkpoints/step_0000004", "--run-dir", f"{run}-finetune"]
        + ["--job-id", tune_id, "--set", "train.total_steps=2"]
    )
    out = capsys.readouterr()
    assert code == 0, out.err[-3000:] + out.out[-3000:]
    tuned = locate(f"{run}-finetune").join("summary.json").read_json()
    assert tuned["status"] == "finished" and tuned["stage"] == "finetune"
    assert locate(tuned["export_dir"]).join("model.safetensors").is_file()
