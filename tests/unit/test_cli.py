"""The command line as a user meets it: help, one-line errors, exit codes."""

from __future__ import annotations

import argparse
import subprocess
import sys

from launch.cli import COMMAND_NAMES, COMMANDS, build_parser, main


def test_help_lists_exactly_the_registered_commands(capsys):
    parser = build_parser()
    (subparsers,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert (
        tuple(subparsers.choices) == COMMAND_NAMES == tuple(c.replace("_", "-") for c in COMMANDS)
    )
    listed = [action.dest for action in subparsers._choices_actions]
    assert listed == list(COMMAND_NAMES)
    help_text = parser.format_help()
    for name in COMMAND_NAMES:
        assert name in help_text


def test_check_config_ok_prints_resolved_yaml(tmp_path, capsys):
    path = tmp_path / "ok.yaml"
    path.write_text("train:\n  total_steps: 3\n")
    assert main(["check-config", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert "total_steps: 3" in out and "name: ok" in out


def test_check_config_reports_every_problem_and_exits_2(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        "model:\n  name: vit_base_patch16\n  img_size: 30\noptim:\n  lr: 3e-4\n  wieght_decay: 0.1\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "launch.cli", "check-config", "-c", str(path)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("error: ") for line in lines)
    assert "Traceback" not in done.stderr


def test_missing_file_is_one_line(tmp_path, capsys):
    assert main(["check-config", "-c", str(tmp_path / "x.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err
