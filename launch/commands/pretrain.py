"""`vitpipe pretrain`: train a ViT with the MLP head on WebDataset shards."""

from __future__ import annotations

import argparse

from launch.commands.common import (
    add_config_args,
    add_training_args,
    load_stage_config,
    print_result,
)
from launch.stages.training import run_training_stage
from pipelines.config.paths import absolute_resume

NAME = "pretrain"
HELP = "pretrain a ViT on shards (DeepSpeed ZeRO on Ray workers)"
RESULT_KEYS = ("status", "steps", "final_train_loss", "val_top1", "images_per_sec", "checkpoint")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_args(parser)
    add_training_args(parser)


def run(args: argparse.Namespace) -> int:
    summary = run_training_stage(
        load_stage_config(args),
        stage="pretrain",
        resume=absolute_resume(args.resume),
        launcher=args.launcher,
        progress=not args.no_progress,
        stop_at_step=args.stop_at_step,
    )
    return print_result(summary, RESULT_KEYS)
