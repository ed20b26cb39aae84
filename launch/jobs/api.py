"""Ray Jobs API glue for `vitpipe submit` and `vitpipe jobs`: reach the dashboard, submit a
stage as a job, follow its logs, read its status.

A submitted job runs `vitpipe <stage>` on the head node with a resolved config shipped as the
job's `working_dir`; its workers run on any node. So vitpipe must be installed on every node
(`vitpipe` on PATH of the Ray processes), and every path the job uses (shards, run dir,
checkpoints, an SQLite tracking file) must be on storage that every node sees at the same path
(a shared filesystem), or a URI.

Ray's Jobs API runs any code for whoever reaches port 8265 unless the cluster enables token
authentication (ShadowRay, CVE-2023-48022; newer Ray has `RAY_AUTH_MODE=token`, and then the
client needs `RAY_AUTH_MODE=token` and the cluster's token too). Keep it on a private network or behind an
authenticating https proxy; never put secrets into a job's runtime_env (anyone who can list
jobs reads them).

Every call to the Jobs API has one overall deadline (`--timeout`): `requests`' own timeout
restarts on every byte, so a server that trickles bytes would hold it forever, and the SDK client
sets none. A call past its deadline is one line naming the address; the request left behind
runs on in a daemon thread and ends with the process.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from pipelines.config import StageConfig
from pipelines.errors import ConfigError, VitpipeError

T = TypeVar("T")

CONFIG_NAME = "config.resolved.yaml"
CONSOLE_SCRIPT = "vitpipe"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
PROBE_TIMEOUT_S = 10.0
CALL_TIMEOUT_S = 30.0  # the default --timeout: any one call to the Jobs API
# How long `vitpipe jobs stop` gives a job between SIGTERM and SIGKILL (Ray's default is 3 s):
# time for a driver that turns SIGTERM into "checkpoint at the next step" to finish that.
STOP_GRACE_S = 300
# The job's own settings; nothing here may also be set by `launch.processes.ray_cluster.connect` in the
# job's driver (PYTHONPATH, MLFLOW_HTTP_*): Ray refuses to merge the same key twice.
JOB_ENV = {"PYTHONUNBUFFERED": "1", "RAY_JOB_STOP_WAIT_TIME_S": str(STOP_GRACE_S)}


def normalize_address(address: str) -> str:
    """`HOST:8265` -> `http://HOST:8265`; only http(s) dashboard URLs are Jobs API addresses."""
    address = address.strip().rstrip("/")
    if "://" not in address:
        address = f"http://{address}"
    parts = urlsplit(address)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"--address {address!r}: expected the Ray dashboard URL http(s)://HOST:8265 "
            "(the Jobs API), not a GCS or Ray Client address"
        )
    return address


def exposure_warning(address: str) -> str | None:
    """One line when the Jobs API is reached over plain http on an address that is not
    loopback, private or link-local; None otherwise."""
    parts = urlsplit(address)
    if parts.scheme == "https" or _is_internal(parts.hostname or ""):
        return None
    return (
        f"warning: {address} is a public address over plain http: Ray's Jobs API runs any "
        "code for anyone who reaches it unless the cluster enables token authentication "
        "(ShadowRay, CVE-2023-48022), and http sends a token in clear; keep port 8265 on a "
        "private network or behind an authenticating https proxy"
    )


def _is_internal(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        addresses = [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        try:
            infos = socket.getaddrinfo(host, None)
        except OSError:
            return False
        addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    return bool(addresses) and not any(a.is_global for a in addresses)


class JobsClient:
    """Ray's `JobSubmissionClient` with a deadline on every call (`call`)."""

    def __init__(self, sdk: Any, address: str, timeout_s: float):
        self.sdk, self.address, self.timeout_s = sdk, address, timeout_s

    def get_address(self) -> str:
        return self.address

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        bound = getattr(self.sdk, method)
        return within_deadline(lambda: bound(*args, **kwargs), self.address, self.timeout_s)

    def tail_job_logs(self, job_id: str):
        """The SDK's websocket tail (no deadline: a job may print nothing for hours)."""
        return self.sdk.tail_job_logs(job_id)


def within_deadline(fn: Callable[[], T], address: str, timeout_s: float) -> T:
    """`fn()`, or one line once `timeout_s` has passed without its answer (however many bytes
    trickled in meanwhile)."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as err:  # handed to the caller's thread
            outcome["error"] = err

    worker = threading.Thread(target=run, name="vitpipe-jobs-api", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise VitpipeError(
            f"the Ray Jobs API at {address} gave no complete answer in {timeout_s:g} s (it "
            "stopped answering or is too slow; --timeout sets this limit)"
        )
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def connect(
    address: str,
    *,
    warn: Callable[[str], None] | None = None,
    timeout_s: float = CALL_TIMEOUT_S,
) -> JobsClient:
    """A client for `address`, after a quick reachability probe, so that a wrong or dead
    address is one line naming it, within seconds; each call then has `timeout_s`."""
    import requests
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    if not timeout_s > 0:
        raise ConfigError(f"--timeout {timeout_s}: give a number of seconds above 0")
    address = normalize_address(address)
    message = exposure_warning(address)
    if message and warn is not None:
        warn(message)
    probe_s = min(PROBE_TIMEOUT_S, timeout_s)
    try:
        reply = within_deadline(
            lambda: requests.get(f"{address}/api/version", timeout=probe_s), address, probe_s
        )
    except requests.exceptions.Timeout:
        raise VitpipeError(
            f"cannot reach the Ray Jobs API at {address}: no answer in {PROBE_TIMEOUT_S:.0f} s"
        ) from None
    except requests.exceptions.RequestException as err:
        raise VitpipeError(
            f"cannot reach the Ray Jobs API at {address}: {_connection_reason(err)}"
        ) from None
    # 401/403: a Ray dashboard with token authentication; the SDK client sends the token.
    if reply.status_code not in (200, 401, 403):
        raise VitpipeError(
            f"{address} is not a Ray dashboard (HTTP {reply.status_code} on /api/version)"
        )
    try:
        sdk = within_deadline(lambda: JobSubmissionClient(address), address, timeout_s)
        return JobsClient(sdk, address, timeout_s)
    except AuthenticationError as err:
        refused = "rejected our token" if "invalid" in str(err).lower() else "got no token"
        raise VitpipeError(
            f"the Ray Jobs API at {address} requires token authentication and {refused}: "
            "set RAY_AUTH_MODE=token and the cluster's token in RAY_AUTH_TOKEN (or a file in "
            "RAY_AUTH_TOKEN_PATH, default ~/.ray/auth_token)"
        ) from None
    except (ConnectionError, RuntimeError) as err:
        raise VitpipeError(f"Ray Jobs API at {address}: {_sdk_reason(err)}") from None


def _connection_reason(err: Exception) -> str:
    found = re.search(r"\[Errno -?\d+\] [^'\")]+", str(err))
    return found.group(0).strip() if found else type(err).__name__


def _sdk_reason(err: BaseException) -> str:
    """One line from the SDK's `RuntimeError("Request failed with status code N: <text>.")`,
    where the text may be a traceback, or the dashboard's traceback around the job agent's."""
    text = str(err).strip()
    status = re.match(r"Request failed with status code (\d+): ", text)
    causes = [
        found.group(2).strip().rstrip(".")
        for found in re.finditer(r"^\s*[\w.]*(Error|Exception): (.+)$", text, re.MULTILINE)
        if not found.group(2).startswith("Request failed with status code")
    ]
    if causes:
        reason = causes[-1]
    else:
        body = text[status.end() :] if status else text
        lines = [line.strip().rstrip(".") for line in body.splitlines() if line.strip(" .")]
        reason = lines[-1] if lines else type(err).__name__
    return f"{reason} (HTTP {status.group(1)})" if status else reason


def default_job_id(config: StageConfig, stage: str) -> str:
    return default_job_id_for(config.name, stage)


def default_job_id_for(name: str, stage: str) -> str:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{name}-{stage}-{stamp}-{time.time_ns() % 0xFFFF:04x}"


def submit(
    client,
    *,
    entrypoint: str,
    working_dir: Path,
    job_id: str | None,
    metadata: dict[str, str] | None = None,
) -> str:
    try:
        return client.call(
            "submit_job",
            entrypoint=entrypoint,
            submission_id=job_id,
            runtime_env={"working_dir": str(working_dir), "env_vars": dict(JOB_ENV)},
            metadata=metadata or {},
        )
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise VitpipeError(f"submitting to {client.get_address()}: {_sdk_reason(err)}") from None


def job_info(client, job_id: str):
    """`JobDetails` of one job; an unknown id is one line naming it."""
    try:
        return client.call("get_job_info", job_id)
    except RuntimeError as err:
        if "404" in str(err) or "does not exist" in str(err):
            raise VitpipeError(f"no job {job_id!r} on {client.get_address()}") from None
        raise VitpipeError(f"job {job_id!r}: {_sdk_reason(err)}") from None


def list_jobs(client) -> list:
    try:
        jobs = client.call("list_jobs")
    except RuntimeError as err:
        raise VitpipeError(f"listing jobs on {client.get_address()}: {_sdk_reason(err)}") from None
    return sorted(jobs, key=lambda job: job.start_time or 0)


def job_logs(client, job_id: str) -> str:
    job_info(client, job_id)
    try:
        return client.call("get_job_logs", job_id)
    except RuntimeError as err:
        raise VitpipeError(f"logs of job {job_id!r}: {_sdk_reason(err)}") from None


def stop_job(client, job_id: str) -> bool:
    """True when the job was running and was asked to stop."""
    job_info(client, job_id)
    try:
        return bool(client.call("stop_job", job_id))
    except RuntimeError as err:
        raise VitpipeError(f"stopping job {job_id!r}: {_sdk_reason(err)}") from None


def follow_logs(client, job_id: str, write: Callable[[str], Any] | None = None) -> None:
    """Stream the job's logs (to stdout by default) until it ends: the websocket tail, or
    polling where a proxy or a running event loop gets in the way."""
    write = write or sys.stdout.write
    written = 0

    async def tail() -> None:
        nonlocal written
        async for chunk in client.tail_job_logs(job_id):
            write(chunk)
            _flush(write)
            written += len(chunk)

    try:
        asyncio.run(tail())
    except VitpipeError:
        raise
    except Exception:
        _poll_logs(client, job_id, write, skip=written)


def _poll_logs(client, job_id: str, write: Callable[[str], Any], *, skip: int) -> None:
    interval = 1.0
    while True:
        status = str(job_info(client, job_id).status)
        text = client.call("get_job_logs", job_id)
        if len(text) > skip:
            write(text[skip:])
            _flush(write)
            skip = len(text)
        if status in TERMINAL:
            return
        time.sleep(interval)
        interval = min(interval * 1.5, 5.0)


def _flush(write: Callable[[str], Any]) -> None:
    flush = getattr(getattr(write, "__self__", None), "flush", None)
    if flush is not None:
        flush()


def wait_until_done(client, job_id: str, timeout_s: float | None = None):
    """`JobDetails` once the job is SUCCEEDED, FAILED or STOPPED (or at the timeout)."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    interval = 0.5
    while True:
        info = job_info(client, job_id)
        if str(info.status) in TERMINAL or (deadline and time.monotonic() > deadline):
            return info
        time.sleep(interval)
        interval = min(interval * 1.5, 5.0)


def format_time(millis: int | None) -> str:
    if not millis:
        return "-"
    return datetime.fromtimestamp(millis / 1000).strftime("%Y-%m-%d %H:%M:%S")
