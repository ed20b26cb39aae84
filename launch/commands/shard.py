"""`vitpipe shard`: turn the `shard:` source into WebDataset shards + manifest, on Ray."""

from __future__ import annotations

import argparse

from launch.commands.common import add_config_args

NAME = "shard"
HELP = "write WebDataset shards, manifest.json and rejected.parquet from a source (on Ray)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_args(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from launch.stages.shard import format_summary, run_shard
    from pipelines.config import load_config
    from pipelines.errors import ConfigError

    config = load_config(args.config, args.overrides)
    if config.shard is None:
        raise ConfigError(
            f"shard: {args.config} has no `shard:` section; `vitpipe shard` needs one"
        )
    summary = run_shard(config, progress=not args.no_progress)
    print(format_summary(summary))
    return 0
