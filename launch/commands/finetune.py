"""`vitpipe finetune`: swap the MLP head for a zero-initialised linear head and train on a
downstream dataset (shard dir, or any shard source sharded into the run dir first)."""

from __future__ import annotations

import argparse

from launch.commands.common import (
    add_config_args,
    add_from_arg,
    add_training_args,
    load_stage_config,
    print_result,
)
from launch.stages.finetune import run_finetune_stage
from pipelines.config.paths import absolute, absolute_resume

NAME = "finetune"
HELP = "fine-tune a pretrained ViT (export, checkpoint or Hugging Face dir) on a downstream set"
RESULT_KEYS = (
    "status",
    "steps",
    "final_train_loss",
    "val_top1",
    "export_dir",
    "registered_model_uri",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_args(parser)
    add_from_arg(parser, "an export dir, a checkpoint dir (or run dir), or a Hugging Face ViT dir")
    add_training_args(parser)


def run(args: argparse.Namespace) -> int:
    summary = run_finetune_stage(
        load_stage_config(args),
        init_from=absolute(args.source),
        resume=absolute_resume(args.resume),
        launcher=args.launcher,
        progress=not args.no_progress,
        stop_at_step=args.stop_at_step,
    )
    return print_result(summary, RESULT_KEYS)
