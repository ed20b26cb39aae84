"""`vitpipe submit` / `vitpipe jobs` against a real 2-node Ray cluster on this machine.

The cluster (`ray.cluster_utils.Cluster`: a head and one worker node, 1 CPU each, dashboard on
127.0.0.1) lives in a helper subprocess with its own Ray temp dir, so the session's local Ray
(`ray_local`) in this process is never touched, and `address="auto"` lookups elsewhere on the
machine never find it. The helper shuts the cluster down when its stdin closes; whatever is
left (processes started from or inside that temp dir) is killed by pid.

The helper starts after `ray_local`, from this process's environment: starting a local Ray
turns on Ray's token authentication here (`RAY_AUTH_MODE=token`, the token in ~/.ray), so the
cluster and the in-process Jobs clients agree on it whatever the test order.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from launch.cli import main

from train_fixtures import summary, tiny_job, write_yaml

pytestmark = [pytest.mark.multinode, pytest.mark.slow]

START_TIMEOUT_S = 180
_CLUSTER_SCRIPT = r"""
import json, os, sys
from ray._private.utils import get_ray_address_file, read_ray_address, write_ray_address
from ray.cluster_utils import Cluster

temp_dir, dashboard_port = sys.argv[1], int(sys.argv[2])
machine_wide = read_ray_address()  # Cluster overwrites /tmp/ray/ray_current_cluster
node = {"num_cpus": 1, "node_ip_address": "127.0.0.1", "dashboard_agent_listen_port": None}
cluster = Cluster(
    initialize_head=True,
    head_node_args={
        **node,
        "include_dashboard": True,
        "dashboard_host": "127.0.0.1",
        "dashboard_port": dashboard_port,
        "temp_dir": temp_dir,
    },
)
try:
    # Jobs find their cluster through <temp dir>/ray_current_cluster; other Ray users on this
    # machine keep finding theirs through the machine-wide file.
    write_ray_address(cluster.address, temp_dir)
    if machine_wide is not None:
        write_ray_address(machine_wide)
    elif read_ray_address() == cluster.address:
        os.remove(get_ray_address_file(None))
    cluster.add_node(**node)
    cluster.wait_for_nodes()
    print(json.dumps({"url": "http://" + cluster.webui_url, "gcs": cluster.address}), flush=True)
    sys.stdin.read()  # until the test closes the pipe, or dies
finally:
    cluster.shutdown()
"""


@pytest.fixture(scope="module")
def jobs_url(ray_local) -> Iterator[str]:
    """The Jobs API URL of a 2-node cluster (head + 1 worker node, 1 CPU each)."""
    temp_dir = tempfile.mkdtemp(prefix="vpmn", dir="/tmp")  # short: unix socket paths
    log_path = Path(temp_dir) / "cluster.log"
    env = dict(os.environ)
    # Jobs run `vitpipe ...` on the head node: our console script must be on its PATH.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    env.pop("RAY_ADDRESS", None)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", _CLUSTER_SCRIPT, temp_dir, str(_free_port())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            env=env,
            text=True,
            start_new_session=True,
        )
    try:
        url = json.loads(_read_line(proc, log_path, START_TIMEOUT_S))["url"]
        _wait_for_jobs_api(url, START_TIMEOUT_S)
        yield url
    finally:
        _tear_down(proc, temp_dir)


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
    address = f"http://127.0.0.1:{_free_port()}"
    assert main(["submit", "-c", str(config), "--address", address]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: cannot reach the Ray Jobs API at {address}")


def test_public_http_address_warns():
    from launch.jobs_api import exposure_warning

    assert exposure_warning("http://127.0.0.1:8265") is None
    assert exposure_warning("http://10.1.2.3:8265") is None
    assert exposure_warning("http://localhost:8265") is None
    assert exposure_warning("https://203.0.113.7:8265") is None
    warning = exposure_warning("http://8.8.8.8:8265")
    assert warning and "CVE-2023-48022" in warning and "\n" not in warning


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _read_line(proc: subprocess.Popen, log_path: Path, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        ready, _, _ = select.select([proc.stdout], [], [], 1.0)
        if ready:
            line = proc.stdout.readline()
            if line.strip():
                return line
    tail = log_path.read_text()[-3000:] if log_path.is_file() else ""
    raise RuntimeError(f"the test cluster did not start (exit {proc.poll()}):\n{tail}")


def _wait_for_jobs_api(url: str, timeout_s: float) -> None:
    """Until the Jobs API lists jobs (the dashboard answers before its job module is up)."""
    from ray.job_submission import JobSubmissionClient

    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            JobSubmissionClient(url).list_jobs()
            return
        except Exception as err:
            last = err
        time.sleep(0.5)
    raise RuntimeError(f"the Jobs API at {url} did not answer in {timeout_s} s: {last}")


def _tear_down(proc: subprocess.Popen, temp_dir: str) -> None:
    if proc.stdin:
        proc.stdin.close()  # the helper shuts its cluster down
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    if proc.stdout:
        proc.stdout.close()
    for pid in _processes_using(temp_dir):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    shutil.rmtree(temp_dir, ignore_errors=True)


def _processes_using(temp_dir: str) -> list[int]:
    """Our leftovers: processes whose command line names the cluster's temp dir, or that run
    inside it (a job's driver and its children run in the job's working_dir there)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if temp_dir in cmdline or cwd.startswith(temp_dir):
            found.append(int(entry.name))
    return found
