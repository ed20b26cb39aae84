"""`vitpipe run`: the whole pipeline of a pipeline config (shard -> pretrain -> finetune -> eval)."""

from __future__ import annotations

import argparse
from pathlib import Path

from launch.commands.common import add_config_args

NAME = "run"
HELP = "run shard -> pretrain -> finetune -> eval from one pipeline config (e.g. configs/demo.yaml)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_args(parser)
    parser.add_argument("--run-dir", type=Path, default=None, help="default: runs/<config name>")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from launch.stages.pipeline import format_table, run_pipeline
    from pipelines.config.pipeline import load_pipeline

    pipeline, stages = load_pipeline(args.config, args.overrides)
    summary = run_pipeline(pipeline, stages, run_dir=args.run_dir, progress=not args.no_progress)
    print(format_table(summary))
    print(f"summary: {Path(summary['run_dir']) / 'summary.json'}")
    return 0
