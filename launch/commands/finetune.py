"""`vitpipe finetune`: swap the MLP head for a zero-initialised linear head and train on a
downstream dataset (shard dir, or any shard source sharded into the run dir first)."""

from __future__ import annotations

import argparse
import json

from launch.commands.common import add_config_args
from launch.commands.pretrain import add_training_args

NAME = "finetune"
HELP = "fine-tune a pretrained ViT (export, checkpoint or Hugging Face dir) on a downstream set"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_args(parser)
    parser.add_argument(
        "--from",
        dest="init_from",
        required=True,
        metavar="PATH",
        help="an export dir, a checkpoint dir (or run dir), or a Hugging Face ViT dir",
    )
    add_training_args(parser)


def run(args: argparse.Namespace) -> int:
    from launch.stages.finetune import run_finetune_job
    from pipelines.config import load_config

    config = load_config(args.config, args.overrides)
    summary = run_finetune_job(
        config,
        init_from=args.init_from,
        run_dir=args.run_dir,
        resume=args.resume,
        launcher=args.launcher,
        progress=not args.no_progress,
        stop_at_step=args.stop_at_step,
    )
    keys = ("status", "steps", "final_train_loss", "val_top1", "export_dir", "registered_model_uri")
    print(json.dumps({k: summary.get(k) for k in keys}))
    return 0
