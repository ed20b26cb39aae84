"""`vitpipe run`: the whole pipeline of a pipeline config (shard -> pretrain -> finetune -> eval)."""

from __future__ import annotations

import argparse

from launch.commands.common import add_config_args, add_run_dir_args, warn_about_paths
from launch.stages.pipeline import format_table, run_pipeline
from pipelines.config.pipeline import load_pipeline, resolve_stages
from pipelines.layout import SUMMARY

NAME = "run"
HELP = "run shard -> pretrain -> finetune -> eval from one pipeline config (e.g. configs/demo.yaml)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_args(parser)
    add_run_dir_args(parser)


def run(args: argparse.Namespace) -> int:
    pipeline, stages = load_pipeline(args.config, args.overrides)
    warn_about_paths(list(stages.values()))
    run_dir, stages = resolve_stages(pipeline, stages, args.run_dir)
    summary = run_pipeline(pipeline, stages, run_dir=run_dir, progress=not args.no_progress)
    print(format_table(summary))
    print(f"summary: {run_dir.join(SUMMARY).uri}")
    return 0
