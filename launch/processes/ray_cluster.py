"""Connecting to Ray: a local, loopback-only Ray by default, or an existing cluster.

Ray's dashboard and Jobs API have no authentication (ShadowRay, CVE-2023-48022), so a local
Ray is bound to 127.0.0.1 whatever the environment (`launch/processes/loopback.py`) and started fresh
(`address="local"`), never joined by accident.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from launch.processes.loopback import LOOPBACK, prepare_ray, worker_env
from pipelines.config import ClusterSection
from pipelines.errors import VitpipeError

# Settings the driver decided that workers on other nodes must share.
_FORWARDED_ENV = (
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
    "MLFLOW_HTTP_REQUEST_TIMEOUT",
)


@contextlib.contextmanager
def ray_session(cluster: ClusterSection, num_cpus: int | None = None) -> Iterator[None]:
    """Ray for the duration of a command; reuses an already-initialised Ray (tests, notebooks)."""
    if not cluster.address:
        prepare_ray()  # before Ray is imported here
    import ray

    if ray.is_initialized():
        yield
        return
    connect(cluster, num_cpus=num_cpus)
    try:
        yield
    finally:
        ray.shutdown()


def worker_runtime_env(*, local: bool = False) -> dict:
    """The runtime_env every Ray worker of ours gets. Never credentials (AWS_*, tokens): anyone
    who can list a cluster's jobs reads a runtime_env; each node uses its own environment or
    instance role for storage. `local`: also the loopback-only settings of local mode."""
    # The workers we start must import this project exactly as the driver does.
    env_vars = {"PYTHONPATH": _project_pythonpath()}
    env_vars.update({k: os.environ[k] for k in _FORWARDED_ENV if k in os.environ})
    if local:
        env_vars.update(worker_env())
    return {"env_vars": env_vars}


def connect(cluster: ClusterSection, num_cpus: int | None = None) -> None:
    if not cluster.address:
        prepare_ray()  # before Ray is imported here
    import ray

    if cluster.address:
        try:
            ray.init(address=cluster.address, runtime_env=worker_runtime_env(), log_to_driver=True)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise VitpipeError(
                f"cluster.address={cluster.address!r}: cannot connect to Ray ({err})"
            ) from None
        return
    ray.init(
        address="local",
        _node_ip_address=LOOPBACK,
        num_cpus=num_cpus or max(os.cpu_count() or 1, 1),
        num_gpus=None if cluster.use_gpu else 0,
        # Ray Train's placement-group cleaner polls the State API, which the dashboard serves;
        # without it every poll logs a warning. Loopback only.
        include_dashboard=True,
        dashboard_host=LOOPBACK,
        runtime_env=worker_runtime_env(local=True),
        log_to_driver=True,
        configure_logging=True,
        logging_level="WARNING",
    )


def _project_pythonpath() -> str:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    existing = os.environ.get("PYTHONPATH", "")
    return os.pathsep.join(p for p in (root, existing) if p)
