"""`vitpipe jobs list|status|logs|stop [JOB_ID]`: the jobs of a Ray cluster, via its Jobs API."""

from __future__ import annotations

import argparse
import sys

from launch.jobs import api
from pipelines.errors import ConfigError

NAME = "jobs"
HELP = "list a Ray cluster's jobs, or show the status or logs of one, or stop it"
ACTIONS = ("list", "status", "logs", "stop")


def add_api_args(parser: argparse.ArgumentParser) -> None:
    """--address and --timeout, as `submit` and `jobs` take them."""
    parser.add_argument(
        "--address",
        required=True,
        metavar="URL",
        help="the Ray dashboard / Jobs API, http://HEAD:8265 (keep it on a private network)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=api.CALL_TIMEOUT_S,
        metavar="SECONDS",
        help=f"the most any one call to the Jobs API may take (default {api.CALL_TIMEOUT_S:g})",
    )


def connect(args: argparse.Namespace) -> api.JobsClient:
    return api.connect(
        args.address, warn=lambda m: print(m, file=sys.stderr, flush=True), timeout_s=args.timeout
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=ACTIONS)
    parser.add_argument("job_id", nargs="?", metavar="JOB_ID", help="for status, logs and stop")
    add_api_args(parser)
    parser.add_argument(
        "--follow",
        action="store_true",
        help="logs: follow until the job ends; exit 0 only if it SUCCEEDED",
    )
    parser.add_argument(
        "--no-wait", action="store_true", help="stop: return once the stop is requested"
    )


def run(args: argparse.Namespace) -> int:
    if args.action != "list" and not args.job_id:
        raise ConfigError(f"vitpipe jobs {args.action} needs a JOB_ID")
    if args.action == "list" and args.job_id:
        raise ConfigError("vitpipe jobs list takes no JOB_ID")
    client = connect(args)
    if args.action == "list":
        return _list(client)
    if args.action == "status":
        info = api.job_info(client, args.job_id)
        message = (info.message or "").strip().splitlines()
        print(f"{args.job_id} {info.status}" + (f": {message[0]}" if message else ""))
        return 0
    if args.action == "logs":
        api.job_info(client, args.job_id)
        if not args.follow:
            sys.stdout.write(api.job_logs(client, args.job_id))
            return 0
        api.follow_logs(client, args.job_id)
        return exit_status(args.job_id, api.wait_until_done(client, args.job_id))
    if not api.stop_job(client, args.job_id):
        info = api.job_info(client, args.job_id)
        print(f"{args.job_id} {info.status}: not running, nothing to stop")
        return 0
    if args.no_wait:
        print(f"{args.job_id}: stop requested")
        return 0
    print(f"{args.job_id}: stop requested; waiting for it to checkpoint and exit", flush=True)
    info = api.wait_until_done(client, args.job_id, timeout_s=api.STOP_GRACE_S + 30)
    print(f"{args.job_id} {info.status}")
    return 0


def exit_status(job_id: str, info) -> int:
    """A finished job as the exit status of the command that followed it: 0 only for
    SUCCEEDED; otherwise one `error:` line with the job's status and message."""
    status = str(info.status)
    if status == "SUCCEEDED":
        print(f"job {job_id} {status}", flush=True)
        return 0
    detail = (info.message or "").strip().splitlines()
    print(f"error: job {job_id} {status}" + (f": {detail[0]}" if detail else ""), file=sys.stderr)
    return 1


def _list(client) -> int:
    jobs = api.list_jobs(client)
    if not jobs:
        print(f"no jobs on {client.get_address()}")
        return 0
    rows = [("JOB_ID", "STATUS", "STARTED", "ENTRYPOINT")]
    for job in jobs:
        rows.append(
            (
                job.submission_id or job.job_id or "-",
                str(job.status),
                api.format_time(job.start_time),
                job.entrypoint,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        cells = [row[i].ljust(widths[i]) for i in range(3)]
        print("  ".join([*cells, row[3]]))
    return 0
