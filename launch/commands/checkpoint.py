"""`vitpipe checkpoint upgrade PATH`: make a trusted checkpoint loadable without running code."""

from __future__ import annotations

import argparse
import json

NAME = "checkpoint"
HELP = (
    "checkpoint maintenance: `upgrade PATH` rewrites files that vitpipe refuses to unpickle "
    "(and 0.1 rank states) in safe formats; it RUNS CODE from those files: only for files you trust"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    upgrade = sub.add_parser(
        "upgrade",
        help="rewrite refused files of a checkpoint in safe formats (runs code from them)",
        description=(
            "Load each checkpoint file that the pickle allowlist refuses (or a vitpipe 0.1 "
            "rank state) ONCE with full unpickling, which runs any code the file carries, and "
            "rewrite it in a format that loads without running code; the folder's COMMITTED.json "
            "is rewritten with the new sizes and sha256. Use it only on files you trust."
        ),
    )
    upgrade.add_argument(
        "path", help="a checkpoint folder or one file in it (a local path or a storage URI)"
    )


def run(args: argparse.Namespace) -> int:
    from pipelines.checkpoint.upgrade import upgrade

    done = upgrade(args.path)
    if not done:
        print(json.dumps({"path": str(args.path), "upgraded": []}))
        return 0
    for item in done:
        print(
            json.dumps(
                {
                    "upgraded": item.source,
                    "written": list(item.written),
                    "note": item.note,
                }
            )
        )
    return 0
