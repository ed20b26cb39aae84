"""A real multi-node Ray cluster with the Jobs API, on this machine, for a test module.

The cluster (`ray.cluster_utils.Cluster`: a head and `worker_nodes` worker nodes, 1 CPU each,
dashboard on 127.0.0.1) lives in a helper subprocess with its own Ray temp dir, so the session's
local Ray (`ray_local`) in the test process is never touched, and `address="auto"` lookups
elsewhere on the machine never find it. The helper shuts the cluster down when its stdin closes;
whatever is left (processes started from or inside that temp dir) is killed by pid.

Start it after `ray_local`, from the test process's environment: starting a local Ray turns on
Ray's token authentication here (`RAY_AUTH_MODE=token`, the token in ~/.ray), so the cluster and
the in-process Jobs clients agree on it whatever the test order. The environment also carries
the test object store's endpoint and credentials (conftest), as a cloud node's would.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from launch.processes.ports import free_loopback_port

START_TIMEOUT_S = 180
_CLUSTER_SCRIPT = r"""
import json, os, sys
from ray._private.utils import get_ray_address_file, read_ray_address, write_ray_address
from ray.cluster_utils import Cluster

temp_dir, dashboard_port, worker_nodes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
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
    for _ in range(worker_nodes):
        cluster.add_node(**node)
    cluster.wait_for_nodes()
    print(json.dumps({"url": "http://" + cluster.webui_url, "gcs": cluster.address}), flush=True)
    sys.stdin.read()  # until the test closes the pipe, or dies
finally:
    cluster.shutdown()
"""


@contextlib.contextmanager
def jobs_cluster(worker_nodes: int = 1) -> Iterator[str]:
    """The Jobs API URL of a cluster of a head and `worker_nodes` worker nodes, 1 CPU each."""
    temp_dir = tempfile.mkdtemp(prefix="vpmn", dir="/tmp")  # short: unix socket paths
    log_path = Path(temp_dir) / "cluster.log"
    env = dict(os.environ)
    # Jobs run `vitpipe ...` on the head node: our console script must be on its PATH.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    env.pop("RAY_ADDRESS", None)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _CLUSTER_SCRIPT,
                temp_dir,
                str(free_loopback_port()),
                str(worker_nodes),
            ],
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
