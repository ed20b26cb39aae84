"""One real local-mode `vitpipe pretrain` in a subprocess, with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER
unset (conftest sets it for this process; users do not), watched from outside:

- while it trains, no process of its tree (driver, GCS, raylet, dashboard, agents,
  Ray Train workers and their torch.distributed rendezvous) listens beyond 127.0.0.0/8 or ::1;
- SIGKILL one Ray Train worker: none of its dataloader worker processes remains 10 s later.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from train_fixtures import tiny_job, write_yaml

pytestmark = pytest.mark.slow

SHARDS = Path(__file__).parents[1] / "fixtures" / "ckpt_v0_1" / "shards"
UNSET = ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")


def is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or bool(mapped and mapped.is_loopback)


def tree(root: psutil.Process) -> list[psutil.Process]:
    try:
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def listeners(procs: list[psutil.Process]) -> set[tuple[str, str, int]]:
    found = set()
    for proc in procs:
        try:
            for conn in proc.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    found.add((proc.name(), conn.laddr.ip, conn.laddr.port))
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            continue
    return found


def train_workers(procs: list[psutil.Process]) -> list[psutil.Process]:
    found = []
    for proc in procs:
        try:
            if "RayTrainWorker" in " ".join(proc.cmdline()):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            continue
    return found


def steps_done(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return 0
    return sum('"train/loss"' in line for line in path.read_text().splitlines())


def command_line(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())[:120]
    except psutil.Error:  # it exited (or is a zombie) since it was listed
        return f"pid {proc.pid} (exited)"


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture(scope="module")
def watched_job(tmp_path_factory):
    """Start the job, scan its sockets while it trains, SIGKILL a worker; what was seen."""
    tmp = tmp_path_factory.mktemp("local_job")
    shards = tmp / "shards"
    shutil.copytree(SHARDS, shards)
    run_dir = tmp / "run"
    raw = tiny_job(
        shards,
        tmp,
        train={"total_steps": 400, "log_every_n_steps": 1},
        checkpoint={"every_n_steps": None},
        tracking={"enabled": False},
        data={"num_workers": 2},
    )
    config = write_yaml(raw, tmp / "config.yaml")
    env = {k: v for k, v in os.environ.items() if k not in UNSET}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    # Ray 2.60 also kills a dead worker's process group; off here, so that the test checks our
    # own guarantee (which holds for --launcher local, torchrun and other Ray settings too).
    env["RAY_process_group_cleanup_enabled"] = "false"
    log = (tmp / "job.log").open("w")
    argv = ["-m", "launch.cli", "pretrain", "-c", str(config), "--run-dir", str(run_dir)]
    job = subprocess.Popen(
        [sys.executable, *argv, "--resume", "never", "--no-progress"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    root = psutil.Process(job.pid)
    seen: dict = {"listeners": set(), "workers": 0, "loaders": {}, "survivors": {}}
    started: dict[int, psutil.Process] = {}
    try:
        deadline = time.monotonic() + 600
        while steps_done(run_dir) < 3:
            assert job.poll() is None, (tmp / "job.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the job did not start training"
            time.sleep(1)
        for _ in range(5):  # training: every process of the tree is up
            procs = tree(root)
            started.update({p.pid: p for p in procs})
            seen["listeners"] |= listeners(procs)
            seen["workers"] = max(seen["workers"], len(train_workers(procs)))
            time.sleep(0.5)
        assert steps_done(run_dir) < 400, "scanned too late: the job had finished"

        victim = train_workers(tree(root))[0]
        loaders = victim.children(recursive=True)
        started.update({p.pid: p for p in loaders})
        seen["loaders"] = {p.pid: command_line(p) for p in loaders if alive(p.pid)}
        victim.send_signal(signal.SIGKILL)
        time.sleep(10)
        seen["survivors"] = {pid: cmd for pid, cmd in seen["loaders"].items() if alive(pid)}
    finally:
        os.killpg(job.pid, signal.SIGTERM)
        try:
            job.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
        for proc in started.values():  # never leave a process behind, whatever the outcome
            if proc.is_running():
                proc.kill()
        log.close()
    seen["log"] = (tmp / "job.log").read_text()[-2000:]
    return seen


def test_local_mode_listens_on_loopback_only(watched_job):
    assert watched_job["workers"] == 2, watched_job["log"]
    assert any(name.startswith("gcs_server") for name, _, _ in watched_job["listeners"])
    exposed = sorted(x for x in watched_job["listeners"] if not is_loopback(x[1]))
    assert exposed == [], json.dumps(exposed)


def test_dataloader_workers_exit_with_their_trainer(watched_job):
    assert len(watched_job["loaders"]) >= 2, watched_job["log"]  # two loader workers, at least
    assert watched_job["survivors"] == {}, watched_job["survivors"]
