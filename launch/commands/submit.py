"""`vitpipe submit`: run a stage on a Ray cluster through its Jobs API.

The config is validated here first (a bad config never reaches the cluster), its relative
paths are made absolute, and the resolved copy is shipped as the job's `working_dir`; the job
runs `vitpipe <stage> -c config.resolved.yaml` on the head node, joined to that cluster
(`launch/jobs/spec.py`). vitpipe must be installed on every node, and shards, run dirs and
checkpoints must be on storage every node sees at the same path (a shared filesystem) or URIs.
See `launch/jobs/api.py`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from launch.commands.common import add_config_args
from launch.commands.jobs import add_api_args, connect, exit_status
from launch.jobs import api
from launch.jobs.spec import STAGES, build_job

NAME = "submit"
HELP = "submit a stage to a Ray cluster (Ray Jobs API) and follow its logs"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_args(parser)
    add_api_args(parser)
    parser.add_argument("--stage", choices=STAGES, default="pretrain", help="default: pretrain")
    parser.add_argument(
        "--from",
        dest="init_from",
        default=None,
        metavar="PATH_OR_URI",
        help="finetune, eval: the model to start from (a storage URI, or a path the head sees)",
    )
    parser.add_argument(
        "--run-dir",
        default=None,
        help="default: runs/<config name>; a storage URI, or a path every node sees",
    )
    parser.add_argument(
        "--resume",
        default=None,
        metavar="auto|never|PATH",
        help="pretrain, finetune: as for `vitpipe pretrain` (default there: auto)",
    )
    parser.add_argument("--job-id", default=None, help="default: <name>-<stage>-<time>-<hex>")
    parser.add_argument(
        "--no-wait", action="store_true", help="return once submitted; do not follow the logs"
    )


def run(args: argparse.Namespace) -> int:
    spec = build_job(
        args.stage,
        args.config,
        args.overrides,
        run_dir=args.run_dir,
        resume=args.resume,
        init_from=args.init_from,
    )
    client = connect(args)
    address = client.get_address()
    with tempfile.TemporaryDirectory(prefix="vitpipe-submit-") as tmp:
        (Path(tmp) / api.CONFIG_NAME).write_text(spec.config_text)
        job_id = api.submit(
            client,
            entrypoint=spec.entrypoint,
            working_dir=Path(tmp),
            job_id=args.job_id or api.default_job_id_for(spec.name, args.stage),
            metadata={"vitpipe.stage": args.stage, "vitpipe.config": spec.name},
        )
    print(f"submitted job {job_id} to {address}: {spec.entrypoint}", flush=True)
    if args.no_wait:
        print(
            f"follow it: vitpipe jobs logs {job_id} --follow --address {address}", file=sys.stderr
        )
        return 0
    try:
        api.follow_logs(client, job_id)
        info = api.wait_until_done(client, job_id)
    except KeyboardInterrupt:
        print(
            f"detached; job {job_id} keeps running (stop it: vitpipe jobs stop {job_id} "
            f"--address {address})",
            file=sys.stderr,
        )
        raise
    return exit_status(job_id, info)
