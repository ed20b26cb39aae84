"""The on-disk form of a checkpoint and its commit protocol (no policy: that is the Checkpointer).

`checkpoints/step_NNNNNNN/` holds DeepSpeed's per-rank files plus each rank's own state
(`rank_state.py`: loader position and RNG states, as JSON + safetensors). It counts only once
rank 0 has written `COMMITTED.json` (`marker.py`: every file with its size, sha256 and writer,
plus metadata, progress included), after every rank reported the files it wrote.
`checkpoints/latest` (a tag) is then replaced atomically and old committed ones are pruned.
A folder whose marker is missing, or whose files no longer match it, is never loaded.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.errors import CheckpointError
from pipelines.layout import (
    CHECKPOINTS_DIR,
    LATEST,
    MARKER,
    UNIVERSAL_DIR,
    checkpoint_tag,
    step_of_tag,
)
from pipelines.train import marker as markers
from pipelines.train.safe_load import vet_folder

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
            found.append(Checkpoint(folder, markers.read(folder)))
        elif warn:
            log.warning("skipping checkpoint %s: %s", folder, problem)
    return sorted(found, key=lambda c: c.step)


def latest_checkpoint(root: Path) -> Checkpoint | None:
    committed = list_checkpoints(root)
    return committed[-1] if committed else None


def open_checkpoint(path: Path) -> Checkpoint:
    """A checkpoint folder given by the user (or a run dir / checkpoints dir: its newest)."""
    path = Path(path)
    for candidate_root in (path / CHECKPOINTS_DIR, path):
        if candidate_root.is_dir() and not (candidate_root / MARKER).exists():
            newest = latest_checkpoint(candidate_root)
            if newest is not None:
                return newest
    if not path.exists():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    problem = verify(path)
    if problem:
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be loaded: {problem}")
    return Checkpoint(path, markers.read(path))


def is_checkpoint_dir(path: Path) -> bool:
    """Whether `path` looks like a checkpoint folder, a checkpoints dir or a run dir."""
    return (
        (path / MARKER).is_file()
        or (path / CHECKPOINTS_DIR).is_dir()
        or any(step_of_tag(p.name) is not None for p in path.iterdir() if p.is_dir())
    )


def verify(folder: Path, *, hashes: bool = False) -> str | None:
    """Why `folder` cannot be loaded, or None when its marker and files agree (sizes; sha256 too
    with `hashes`, which reads every file)."""
    try:
        marker = markers.read(folder)
    except CheckpointError as err:
        return str(err).split(": ", 1)[-1]
    return markers.check(folder, marker, hashes=hashes).problem


def check_loadable(checkpoint: Checkpoint) -> None:
    """Before a checkpoint is read: every file matches its marker's sha256 (a 0.1 marker has only
    sizes: noticed once) and no torch file in it could run code when unpickled."""
    result = markers.check(checkpoint.path, checkpoint.marker, hashes=True)
    if result.problem:
        raise CheckpointError(f"checkpoint {checkpoint.path} cannot be loaded: {result.problem}")
    if result.notice:
        log.warning("%s", result.notice)
    vet_folder(checkpoint.path)


def prepare_folder(root: Path, step: int) -> Path:
    """Rank 0, before a save: an empty folder for `step` (a torn earlier attempt is removed, so
    its files are never mixed in)."""
    path = root / checkpoint_tag(step)
    root.mkdir(parents=True, exist_ok=True)
    if path.exists():
        shutil.rmtree(path)
    return path


def commit(
    path: Path, step: int, reports: list[dict[str, dict[str, Any]]], meta: dict[str, Any]
) -> None:
    """Rank 0, once every rank reported the files it wrote (`reports[r]`, from
    `marker.report`): the marker, then `latest`."""
    marker = markers.build(step, len(reports), reports, meta)
    problem = markers.check(path, marker, hashes=False).problem
    if problem:
        raise CheckpointError(f"checkpoint {path} was not committed: {problem}")
    markers.write(path, marker)
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


def _step_folders(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and step_of_tag(p.name) is not None)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
