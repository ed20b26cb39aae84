"""`vitpipe shard`: turn the `shard:` source into WebDataset shards + manifest, on Ray."""

from __future__ import annotations

import argparse

from launch.commands.common import add_config_args, load_stage_config
from launch.stages.shard import format_summary, run_shard

NAME = "shard"
HELP = "write WebDataset shards, manifest.json and rejected.parquet from a source (on Ray)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_args(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--rehash",
        nargs="*",
        default=None,
        metavar="SHARD",
        help="index these of your shards again (a name or URI each; none: all) even where "
        "their size and mtime look unchanged: what a shard changed in place needs",
    )


def run(args: argparse.Namespace) -> int:
    rehash = False if args.rehash is None else (args.rehash or True)
    summary = run_shard(load_stage_config(args), progress=not args.no_progress, rehash=rehash)
    print(format_summary(summary))
    return 0
