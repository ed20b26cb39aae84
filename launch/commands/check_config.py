"""`vitpipe check-config`: validate a config, print every problem or the resolved config."""

from __future__ import annotations

import argparse
import sys

from launch.commands.common import add_config_args

NAME = "check-config"
HELP = "validate a config and print it resolved"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_args(parser)


def run(args: argparse.Namespace) -> int:
    from pipelines.config import dump_config, load_config

    config = load_config(args.config, args.overrides)
    sys.stdout.write(dump_config(config))
    return 0
