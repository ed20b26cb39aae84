"""`vitpipe eval`: accuracy, per-class accuracy and confusion matrix; few-shot with --fewshot."""

from __future__ import annotations

import argparse

from launch.commands.common import (
    add_config_args,
    add_from_arg,
    add_run_dir_args,
    load_stage_config,
    print_result,
)
from launch.stages.evaluate import run_eval_stage
from pipelines.config.paths import absolute

NAME = "eval"
HELP = "evaluate a model (top-1/top-5, per class, confusion matrix; --fewshot K,K)"
RESULT_KEYS = ("status", "val_top1", "val_top5", "val_loss", "count")


def _shots(text: str) -> tuple[int, ...]:
    try:
        shots = tuple(int(k) for k in text.split(",") if k.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--fewshot {text!r}: expected shot counts like 5,10"
        ) from None
    if not shots or min(shots) < 1:
        raise argparse.ArgumentTypeError(f"--fewshot {text!r}: shot counts must be >= 1")
    return shots


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_args(parser)
    add_from_arg(parser, "an export dir, a checkpoint dir (or run dir), or a Hugging Face ViT dir")
    parser.add_argument(
        "--fewshot",
        type=_shots,
        default=(),
        metavar="K[,K...]",
        help="also run k-shot linear evaluation on frozen features (e.g. 5,10)",
    )
    add_run_dir_args(parser)


def run(args: argparse.Namespace) -> int:
    summary = run_eval_stage(
        load_stage_config(args),
        source=absolute(args.source),
        fewshot=args.fewshot,
        progress=not args.no_progress,
    )
    return print_result(summary, RESULT_KEYS)
