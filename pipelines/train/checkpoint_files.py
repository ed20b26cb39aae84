"""The on-disk form of a checkpoint and its commit protocol (no policy: that is the Checkpointer).

`checkpoints/step_NNNNNNN/` holds DeepSpeed's per-rank files plus one rank-state file per rank
(loader position, RNG states). It counts only once rank 0 has written `COMMITTED.json` (every
file with its size, plus metadata, progress included), after all ranks reported success.
`checkpoints/latest` (a tag) is then replaced atomically and old committed ones are pruned.
A folder whose marker is missing, or whose files no longer match it, is never loaded.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipelines.errors import CheckpointError
from pipelines.layout import (
    LATEST,
    MARKER,
    UNIVERSAL_DIR,
    checkpoint_tag,
    rank_state_name,
    step_of_tag,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Checkpoint:
    """A committed checkpoint folder and what its marker says."""

    path: Path
    marker: dict[str, Any]

    @property
    def tag(self) -> str:
        return self.path.name

    @property
    def root(self) -> Path:
        return self.path.parent

    @property
    def step(self) -> int:
        return int(self.marker["step"])

    @property
    def world_size(self) -> int:
        return int(self.marker["world_size"])

    @property
    def meta(self) -> dict[str, Any]:
        return self.marker.get("meta", {})


def list_checkpoints(root: Path, *, warn: bool = True) -> list[Checkpoint]:
    """Committed, intact checkpoints under `root`, oldest first; torn ones warned about."""
    found = []
    for folder in _step_folders(root):
        problem = verify(folder)
        if problem is None:
            found.append(Checkpoint(folder, json.loads((folder / MARKER).read_text())))
        elif warn:
            log.warning("skipping checkpoint %s: %s", folder, problem)
    return sorted(found, key=lambda c: c.step)


def latest_checkpoint(root: Path) -> Checkpoint | None:
    committed = list_checkpoints(root)
    return committed[-1] if committed else None


def open_checkpoint(path: Path) -> Checkpoint:
    """A checkpoint folder given by the user (or a run dir / checkpoints dir: its newest)."""
    path = Path(path)
    for candidate_root in (path / "checkpoints", path):
        if candidate_root.is_dir() and not (candidate_root / MARKER).exists():
            newest = latest_checkpoint(candidate_root)
            if newest is not None:
                return newest
    if not path.exists():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    problem = verify(path)
    if problem:
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be loaded: {problem}")
    return Checkpoint(path, json.loads((path / MARKER).read_text()))


def is_checkpoint_dir(path: Path) -> bool:
    """Whether `path` looks like a checkpoint folder, a checkpoints dir or a run dir."""
    return (
        (path / MARKER).is_file()
        or (path / "checkpoints").is_dir()
        or any(step_of_tag(p.name) is not None for p in path.iterdir() if p.is_dir())
    )


def verify(folder: Path) -> str | None:
    """Why `folder` cannot be loaded, or None when its marker and files agree."""
    marker_path = folder / MARKER
    if not marker_path.is_file():
        return "no completion marker (torn while saving)"
    try:
        marker = json.loads(marker_path.read_text())
        files: dict[str, int] = marker["files"]
        int(marker["step"])
        int(marker["world_size"])
    except (ValueError, KeyError, TypeError):
        return "unreadable completion marker"
    for name, size in files.items():
        file = folder / name
        if not file.is_file():
            return f"file {name} is missing"
        if file.stat().st_size != size:
            return f"file {name} has {file.stat().st_size} bytes, the marker says {size}"
    return None


def prepare_folder(root: Path, step: int) -> Path:
    """Rank 0, before a save: an empty folder for `step` (a torn earlier attempt is removed, so
    its files are never mixed in)."""
    path = root / checkpoint_tag(step)
    root.mkdir(parents=True, exist_ok=True)
    if path.exists():
        shutil.rmtree(path)
    return path


def commit(path: Path, step: int, world_size: int, meta: dict[str, Any]) -> None:
    """Rank 0, after every rank wrote: the marker, then `latest`."""
    files = {
        str(p.relative_to(path)): p.stat().st_size
        for p in sorted(path.rglob("*"))
        if p.is_file() and p.name != MARKER
    }
    missing = [rank_state_name(r) for r in range(world_size) if rank_state_name(r) not in files]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)}; not committed")
    marker = {"step": step, "world_size": world_size, "files": files, "meta": meta}
    _write_atomic(path / MARKER, json.dumps(marker, indent=1, sort_keys=True))
    _write_atomic(path.parent / LATEST, path.name + "\n")


def prune(root: Path, keep_last: int) -> None:
    """Keep the newest `keep_last` committed checkpoints (and their universal conversions);
    torn folders older than the newest committed one can never be used and go too."""
    committed = list_checkpoints(root, warn=False)
    newest = committed[-1].step if committed else None
    for old in committed[:-keep_last]:
        shutil.rmtree(old.path, ignore_errors=True)
    for folder in _step_folders(root):
        step = step_of_tag(folder.name)
        if newest is not None and step < newest and not (folder / MARKER).is_file():
            shutil.rmtree(folder, ignore_errors=True)
    universal = root / UNIVERSAL_DIR
    keep = {c.tag for c in list_checkpoints(root, warn=False)}
    if universal.is_dir():
        for folder in universal.iterdir():
            if folder.name not in keep:
                shutil.rmtree(folder, ignore_errors=True)


# -- per-rank state: the loader position and RNG states ----------------------------------------


def rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def write_rank_state(folder: Path, rank: int, loader_state: dict[str, Any]) -> None:
    state = {"loader": loader_state, "rng": rng_state()}
    path = folder / rank_state_name(rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def read_rank_state(checkpoint: Checkpoint, rank: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """(loader state, RNG states) of `rank`."""
    state = torch.load(
        checkpoint.path / rank_state_name(rank), map_location="cpu", weights_only=False
    )
    return state["loader"], state["rng"]


def _step_folders(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and step_of_tag(p.name) is not None)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
