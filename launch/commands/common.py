"""What several commands share: their arguments, loading a job config (paths made absolute here,
once, relative to where the user runs the command), and printing a stage's result."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from launch.processes.launchers import LAUNCHERS
from pipelines.config import StageConfig, load_config
from pipelines.config.paths import tracking_link_warning, with_absolute_paths
from pipelines.layout import SUMMARY


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", required=True, help="config file (YAML)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="override one config field; repeatable",
    )


def add_from_arg(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument("--from", dest="source", required=True, metavar="PATH", help=help_text)


def add_run_dir_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-dir", default=None, help="default: runs/<config name>")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_training_args(parser: argparse.ArgumentParser) -> None:
    add_run_dir_args(parser)
    parser.add_argument(
        "--resume",
        default="auto",
        metavar="auto|never|PATH",
        help="auto: newest committed checkpoint of the run dir (default); never; or a checkpoint dir",
    )
    parser.add_argument(
        "--launcher",
        choices=LAUNCHERS,
        default="ray",
        help="ray: Ray Train workers (default); local: this process (or each torchrun process)",
    )
    parser.add_argument(
        "--stop-at-step",
        type=int,
        default=None,
        metavar="N",
        help="checkpoint and exit cleanly at step N (continue later with --resume auto)",
    )
    parser.add_argument(
        "--runlocal",
        action="store_true",
        help="shrink the recipe to a few steps of a tiny model on local fractal shards "
        "(same as --set runlocal=true)",
    )


def load_stage_config(args: argparse.Namespace) -> StageConfig:
    """The stage config of `-c/--set` (and `--runlocal`), with every path absolute."""
    overrides = list(args.overrides)
    if getattr(args, "runlocal", False):
        overrides.append("runlocal=true")
    config = load_config(args.config, overrides)
    warn_about_paths([config])
    return with_absolute_paths(config, getattr(args, "run_dir", None))


def warn_about_paths(configs: list[StageConfig]) -> None:
    """What the user should know about where the configs write (once per warning), before
    their relative paths are resolved."""
    warnings = {tracking_link_warning(config.tracking.uri) for config in configs}
    for warning in sorted(w for w in warnings if w):
        print(warning, file=sys.stderr, flush=True)


def print_result(summary: dict[str, Any] | None, keys: tuple[str, ...]) -> int:
    """One JSON line with the fields a script wants (nothing on a torchrun rank other than 0,
    which only trained)."""
    if summary is not None:
        shown = {k: summary.get(k) for k in keys}
        shown.update({k: v for k, v in summary.items() if k.startswith("fewshot/")})
        shown["summary"] = f"{str(summary['run_dir']).rstrip('/')}/{SUMMARY}"
        print(json.dumps(shown))
    return 0
