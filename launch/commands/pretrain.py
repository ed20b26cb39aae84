"""`vitpipe pretrain`: train a ViT with the MLP head on WebDataset shards."""

from __future__ import annotations

import argparse
import json

from launch.commands.common import add_config_args

NAME = "pretrain"
HELP = "pretrain a ViT on shards (DeepSpeed ZeRO on Ray workers)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_args(parser)
    add_training_args(parser)


def add_training_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--run-dir", default=None, help="default: runs/<config name>; a path or a storage URI"
    )
    parser.add_argument(
        "--resume",
        default="auto",
        metavar="auto|never|PATH",
        help="auto: newest committed checkpoint of the run dir (default); never; or a checkpoint dir",
    )
    parser.add_argument(
        "--launcher",
        choices=("ray", "local"),
        default="ray",
        help="ray: Ray Train workers (default); local: this process (or each torchrun process)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--stop-at-step",
        type=int,
        default=None,
        metavar="N",
        help="checkpoint and exit cleanly at step N (continue later with --resume auto)",
    )


def run(args: argparse.Namespace) -> int:
    from launch.stages.shard import ensure_shards
    from launch.stages.training import run_training_job
    from pipelines.config import load_config
    from pipelines.config.paths import with_absolute_paths
    from pipelines.run_storage import check_run_dir_supported, check_tracking

    config = with_absolute_paths(load_config(args.config, args.overrides), args.run_dir)
    check_tracking(config)
    check_run_dir_supported(config)
    ensure_shards(config, progress=not args.no_progress)
    summary = run_training_job(
        config,
        stage="pretrain",
        resume=args.resume,
        launcher=args.launcher,
        progress=not args.no_progress,
        stop_at_step=args.stop_at_step,
    )
    print(
        json.dumps(
            {
                k: summary.get(k)
                for k in (
                    "status",
                    "steps",
                    "final_train_loss",
                    "val_top1",
                    "images_per_sec",
                    "checkpoint",
                )
            }
        )
    )
    return 0
