"""`vitpipe check-config`: validate a config, print every problem or the resolved config."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from launch.commands.common import add_config_args, warn_about_paths
from pipelines.config import dump_config, load_config
from pipelines.config.loader import read_yaml
from pipelines.config.pipeline import is_pipeline, load_pipeline
from pipelines.data.loader.train_sources import check_mix_classes

NAME = "check-config"
HELP = "validate a config and print it resolved"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_args(parser)


def run(args: argparse.Namespace) -> int:
    if is_pipeline(read_yaml(Path(args.config))):
        _, stages = load_pipeline(args.config, args.overrides)
        warn_about_paths(list(stages.values()))
        for config in stages.values():
            check_mix_classes(config.data)
        for stage, config in stages.items():
            sys.stdout.write(f"# --- {stage} ---\n{dump_config(config)}")
        return 0
    config = load_config(args.config, args.overrides)
    warn_about_paths([config])
    check_mix_classes(config.data)
    sys.stdout.write(dump_config(config))
    return 0
