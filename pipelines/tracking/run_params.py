"""What a run records about itself: flattened config, versions, git commit."""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

_PACKAGES = (
    "vitpipe",
    "torch",
    "torchvision",
    "deepspeed",
    "ray",
    "mlflow",
    "webdataset",
    "pyarrow",
)


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """`{"a": {"b": 1}}` -> `{"a.b": "1"}`; lists become their repr. MLflow params are strings."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = str(value)
    return out


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def git_commit(start: Path | None = None) -> str | None:
    root = start or Path(__file__).resolve().parent
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def run_params(
    config: dict[str, Any], *, stage: str, world_size: int | None = None
) -> dict[str, str]:
    """The MLflow params of a stage's run: its flattened resolved config, the stage, the world
    size where it trains, package versions and the git commit."""
    params = flatten(config)
    params["stage"] = stage
    if world_size is not None:
        params["world_size"] = str(world_size)
    params.update({f"version.{k}": v for k, v in versions().items()})
    commit = git_commit()
    if commit:
        params["git_commit"] = commit
    return params
