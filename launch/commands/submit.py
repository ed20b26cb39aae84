"""`vitpipe submit`: run a stage on a Ray cluster through its Jobs API.

The config is validated here first (a bad config never reaches the cluster), its relative
paths are made absolute, and the resolved copy is shipped as the job's `working_dir`; the job
runs `vitpipe <stage> -c config.resolved.yaml --set cluster.address=auto` on the head node.
vitpipe must be installed on every node, and shards, run dirs and checkpoints must be on storage
every node sees at the same path (a shared filesystem) or URIs. See `launch/jobs_api.py`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from launch import jobs_api
from launch.commands.common import absolute_resume, add_config_args
from pipelines.config import dump_config, load_config
from pipelines.config.paths import with_absolute_paths
from pipelines.errors import ConfigError

NAME = "submit"
HELP = "submit a stage to a Ray cluster (Ray Jobs API) and follow its logs"
# Stages a job can run: `vitpipe <stage> -c CONFIG` commands that need nothing but a config.
STAGES = ("pretrain", "shard")
# Flags that only these stages take.
_TRAINING_STAGES = ("pretrain",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_args(parser)
    parser.add_argument(
        "--address",
        required=True,
        metavar="URL",
        help="the Ray dashboard / Jobs API, http://HEAD:8265 (keep it on a private network)",
    )
    parser.add_argument("--stage", choices=STAGES, default="pretrain", help="default: pretrain")
    parser.add_argument(
        "--run-dir",
        default=None,
        help="default: runs/<config name>; must be on storage every node sees",
    )
    parser.add_argument(
        "--resume",
        default=None,
        metavar="auto|never|PATH",
        help="as for `vitpipe pretrain` (default there: auto)",
    )
    parser.add_argument("--job-id", default=None, help="default: <name>-<stage>-<time>-<hex>")
    parser.add_argument(
        "--no-wait", action="store_true", help="return once submitted; do not follow the logs"
    )


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.overrides)
    if args.stage == "shard" and config.shard is None:
        raise ConfigError(
            f"shard: {args.config} has no `shard:` section; `--stage shard` needs one"
        )
    if args.stage not in _TRAINING_STAGES:
        for flag, value in (("--run-dir", args.run_dir), ("--resume", args.resume)):
            if value is not None:
                raise ConfigError(f"{flag} applies to training stages, not --stage {args.stage}")
    config = with_absolute_paths(config, args.run_dir)  # the job runs on another machine
    run_dir = config.run_dir if args.run_dir is not None else None
    resume = absolute_resume(args.resume) if args.resume is not None else None
    command = jobs_api.entrypoint(args.stage, run_dir=run_dir, resume=resume)
    client = jobs_api.connect(args.address, warn=_warn)
    address = client.get_address()
    with tempfile.TemporaryDirectory(prefix="vitpipe-submit-") as tmp:
        (Path(tmp) / jobs_api.CONFIG_NAME).write_text(dump_config(config))
        job_id = jobs_api.submit(
            client,
            entrypoint=command,
            working_dir=Path(tmp),
            job_id=args.job_id or jobs_api.default_job_id(config, args.stage),
            metadata={"vitpipe.stage": args.stage, "vitpipe.config": config.name},
        )
    print(f"submitted job {job_id} to {address}: {command}", flush=True)
    if args.no_wait:
        print(
            f"follow it: vitpipe jobs logs {job_id} --follow --address {address}", file=sys.stderr
        )
        return 0
    try:
        jobs_api.follow_logs(client, job_id)
        info = jobs_api.wait_until_done(client, job_id)
    except KeyboardInterrupt:
        print(
            f"detached; job {job_id} keeps running (stop it: vitpipe jobs stop {job_id} "
            f"--address {address})",
            file=sys.stderr,
        )
        raise
    status = str(info.status)
    if status == "SUCCEEDED":
        print(f"job {job_id} {status}", flush=True)
        return 0
    detail = (info.message or "").strip().splitlines()
    print(f"error: job {job_id} {status}" + (f": {detail[0]}" if detail else ""), file=sys.stderr)
    return 1


def _warn(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
