"""Elastic training (`cluster.num_workers: [1, 2]`): on a 2-node Ray cluster, the worker node is
removed mid-run; Ray restarts the worker group on what is left, training continues from the
last committed checkpoint at world size 1 with the global batch kept, reads no sample of the
interrupted epoch twice, and MLflow shows one run. The cluster and the job run in a helper
process (the test process's own Ray cannot join another cluster)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from train_fixtures import keys_by_epoch, tiny_job

pytestmark = [pytest.mark.multinode, pytest.mark.slow]

_SCRIPT = r"""
import json, sys, threading, time
from pathlib import Path
import ray
from ray.cluster_utils import Cluster

temp_dir, config_path, run_dir = sys.argv[1], sys.argv[2], Path(sys.argv[3])
node = {"num_cpus": 1, "node_ip_address": "127.0.0.1"}
cluster = Cluster(initialize_head=True, head_node_args={**node, "temp_dir": temp_dir})
worker = cluster.add_node(**node)
cluster.wait_for_nodes()
ray.init(address=cluster.address)

from launch.stages.training import run_training_stage
from pipelines.config import load_config

outcome = {}
def train():
    try:
        outcome["summary"] = run_training_stage(load_config(config_path), run_dir=run_dir, progress=False)
    except BaseException as err:
        outcome["error"] = repr(err)
thread = threading.Thread(target=train)
thread.start()
marker = run_dir / "checkpoints" / "step_0000002" / "COMMITTED.json"
while not marker.exists() and thread.is_alive():
    time.sleep(0.2)
cluster.remove_node(worker)  # the worker node is lost mid-run
thread.join()
print("RESULT " + json.dumps(outcome, default=str), flush=True)
ray.shutdown()
cluster.shutdown()
"""


def test_losing_a_node_continues_on_the_rest(fractal_shards, tmp_path):
    import yaml

    raw = tiny_job(
        fractal_shards,
        tmp_path,
        train={"total_steps": 8, "record_sample_keys": True},
        checkpoint={"every_n_steps": 2, "keep_last": 4},
        cluster={"num_workers": [1, 2]},
        data={"num_workers": 0},
    )
    config = tmp_path / "elastic.yaml"
    config.write_text(yaml.safe_dump(raw))
    run_dir = tmp_path / "run"
    # After the loss Ray Train first waits this long for a group of the old size (60 s by
    # default) before it shrinks; 30 s still lets a loaded CI machine start the first group.
    env = {
        **os.environ,
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "30",
    }
    env.pop("RAY_ADDRESS", None)
    temp = Path("/tmp") / f"vpel{os.getpid()}"  # short: unix socket paths
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(temp), str(config), str(run_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        cwd=Path(__file__).parents[2],
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, done.stderr[-4000:]
    outcome = json.loads(lines[-1].removeprefix("RESULT "))
    assert "error" not in outcome, outcome
    summary = outcome["summary"]
    assert summary["status"] == "finished" and summary["steps"] == 8
    assert summary["world_size"] == 1 and summary["resumed_from"] is not None

    keys = keys_by_epoch(run_dir).get(0, [])
    assert keys and len(keys) == len(set(keys)), "a sample of the interrupted epoch was repeated"

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=summary["mlflow_tracking_uri"])
    runs = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert [r.info.run_id for r in runs] == [summary["mlflow_run_id"]]
