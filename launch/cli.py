"""The `vitpipe` command line: one subcommand per module in `launch/commands/`.

Errors a user can cause (`VitpipeError`) print as one line each and exit non-zero; anything
else prints one line too, with the traceback only under `--debug`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from launch.processes.launchers import end_process_group
from launch.terminal.logs import configure_logging
from pipelines.errors import VitpipeError

# Listed here only once they work: `vitpipe --help` shows exactly these.
COMMANDS = (
    "check_config",
    "shard",
    "pretrain",
    "finetune",
    "eval",
    "run",
    "export",
    "checkpoint",
    "submit",
    "jobs",
)
COMMAND_NAMES = tuple(name.replace("_", "-") for name in COMMANDS)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks"
    )
    parser = argparse.ArgumentParser(
        prog="vitpipe",
        description="Distributed ViT pretraining: shards on Ray, DeepSpeed ZeRO, MLflow tracking.",
        parents=[common],
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMANDS:
        module = importlib.import_module(f"launch.commands.{module_name}")
        command = sub.add_parser(
            module.NAME, parents=[common], help=module.HELP, description=module.HELP
        )
        module.add_arguments(command)
        command.set_defaults(func=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging()
    debug = getattr(args, "debug", False)
    try:
        return int(args.func(args) or 0)
    except VitpipeError as err:
        if debug:
            raise
        for problem in getattr(err, "problems", None) or [str(err)]:
            print(f"error: {problem}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if debug:
            raise
        message = str(err).strip().splitlines()[0] if str(err).strip() else ""
        print(
            f"error: {type(err).__name__}: {message} (run with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1


def entry() -> int:
    """The `vitpipe` command (and `python -m launch.cli`, which torchrun starts): `main`, then,
    after a job that ended well, its process group is taken down before Python exits."""
    code = main()
    if code == 0:
        end_process_group()
    return code


if __name__ == "__main__":
    sys.exit(entry())
