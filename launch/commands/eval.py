"""`vitpipe eval`: accuracy, per-class accuracy and confusion matrix; few-shot with --fewshot."""

from __future__ import annotations

import argparse
import json

from launch.commands.common import add_config_args

NAME = "eval"
HELP = "evaluate a model (top-1/top-5, per class, confusion matrix; --fewshot K,K)"


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
    parser.add_argument(
        "--from",
        dest="source",
        required=True,
        metavar="PATH",
        help="an export dir, a checkpoint dir (or run dir), or a Hugging Face ViT dir",
    )
    parser.add_argument(
        "--fewshot",
        type=_shots,
        default=(),
        metavar="K[,K...]",
        help="also run k-shot linear evaluation on frozen features (e.g. 5,10)",
    )
    parser.add_argument("--run-dir", default=None, help="default: runs/<config name>")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from launch.stages.evaluate import run_eval_job
    from pipelines.config import load_config

    config = load_config(args.config, args.overrides)
    summary = run_eval_job(
        config,
        source=args.source,
        run_dir=args.run_dir,
        fewshot=args.fewshot,
        progress=not args.no_progress,
    )
    shown = {
        k: v
        for k, v in summary.items()
        if k in ("status", "val_top1", "val_top5", "val_loss", "count")
    }
    shown.update({k: v for k, v in summary.items() if k.startswith("fewshot/")})
    print(json.dumps(shown))
    return 0
