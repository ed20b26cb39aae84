"""`vitpipe export`: consolidated fp32 weights from a sharded checkpoint."""

from __future__ import annotations

import argparse
import json

from pipelines.checkpoint.export import export_checkpoint
from pipelines.config.paths import absolute

NAME = "export"
HELP = "write consolidated fp32 weights (safetensors + config.json) from a checkpoint"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "checkpoint", help="a checkpoint dir, or a run dir (its newest); a path or a storage URI"
    )
    parser.add_argument(
        "out", help="output directory, a path or a storage URI (must not exist or be empty)"
    )
    parser.add_argument("--format", choices=("safetensors", "timm", "hf"), default="safetensors")


def run(args: argparse.Namespace) -> int:
    info = export_checkpoint(absolute(args.checkpoint), absolute(args.out), args.format)
    print(
        json.dumps(
            {
                "out": str(args.out),
                "format": args.format,
                "step": info["step"],
                "source": info["source_checkpoint"],
            }
        )
    )
    return 0
