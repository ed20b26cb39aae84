"""Sharded checkpoints with a commit protocol.

`checkpoints/step_NNNNNNN/` holds DeepSpeed's per-rank files plus each rank's own state
(`pipelines/train/rank_state.py`: loader position, RNG states, as JSON + safetensors). It counts
only once rank 0 has written `COMMITTED.json` (`pipelines/train/marker.py`: every file with its
size and sha256, plus metadata), which happens after all ranks reported success.
`checkpoints/latest` (a tag) is then replaced atomically and old committed ones are pruned.
A folder whose marker is missing, or whose files no longer match it, is never loaded.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.distributed import DistContext
from pipelines.errors import CheckpointError
from pipelines.train import marker as markers
from pipelines.train.rank_state import (  # noqa: F401  (rng_state/set_rng_state: the loop's API)
    read_rank_state,
    rng_state,
    set_rng_state,
    write_rank_state,
)
from pipelines.train.safe_load import vet_folder

log = logging.getLogger(__name__)

MARKER = markers.MARKER
LATEST = "latest"
UNIVERSAL_DIR = "universal"
_TAG_PREFIX = "step_"


def tag_for(step: int) -> str:
    return f"{_TAG_PREFIX}{step:07d}"


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


def save_checkpoint(
    root: Path,
    step: int,
    ctx: DistContext,
    *,
    write_engine: Callable[[Path, str], None],
    rank_state: dict[str, Any],
    meta: dict[str, Any],
    keep_last: int,
) -> Path:
    """All ranks call this together; returns the committed folder or raises CheckpointError."""
    tag = tag_for(step)
    path = root / tag
    if ctx.is_main:
        root.mkdir(parents=True, exist_ok=True)
        if path.exists():  # a torn or superseded attempt at this step: never mix its files in
            shutil.rmtree(path)
    ctx.barrier()
    ok = True
    try:
        write_engine(root, tag)
        write_rank_state(path, ctx.rank, rank_state["loader"], rank_state["rng"])
    except Exception as err:
        ok = False
        log.error("rank %d failed to write checkpoint %s: %s", ctx.rank, path, err)
    if not ctx.all_true(ok):
        raise CheckpointError(f"checkpoint {path} was not committed: a rank failed to write it")
    if ctx.is_main:
        _commit(path, step, ctx.world_size, meta)
        _prune(root, keep_last)
    ctx.barrier()
    return path


def _commit(path: Path, step: int, world_size: int, meta: dict[str, Any]) -> None:
    # Rank 0 hashes every rank's files here (a shared disk); the Checkpointer will gather
    # per-rank `markers.report()`s instead.
    marker = markers.build(step, world_size, markers.reports_by_name(path, world_size), meta)
    problem = markers.check(path, marker, hashes=False).problem
    if problem:
        raise CheckpointError(f"checkpoint {path} was not committed: {problem}")
    markers.write(path, marker)
    _write_atomic(path.parent / LATEST, path.name + "\n")


def _prune(root: Path, keep_last: int) -> None:
    committed = list_checkpoints(root, warn=False)
    newest = committed[-1].step if committed else None
    for old in committed[:-keep_last]:
        shutil.rmtree(old.path, ignore_errors=True)
    # Torn folders older than the newest committed one can never be used.
    for folder in _step_folders(root):
        step = _step_of(folder)
        if newest is not None and step < newest and not (folder / MARKER).is_file():
            shutil.rmtree(folder, ignore_errors=True)
    universal = root / UNIVERSAL_DIR
    keep = {c.tag for c in list_checkpoints(root, warn=False)}
    if universal.is_dir():
        for folder in universal.iterdir():
            if folder.name not in keep:
                shutil.rmtree(folder, ignore_errors=True)


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


def load_rank_state(checkpoint: Checkpoint, rank: int) -> dict[str, Any]:
    loader, rng = read_rank_state(checkpoint.path, rank)
    return {"loader": loader, "rng": rng}


def _step_folders(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(
        p
        for p in root.iterdir()
        if p.is_dir() and p.name.startswith(_TAG_PREFIX) and _step_of(p) >= 0
    )


def _step_of(folder: Path) -> int:
    try:
        return int(folder.name[len(_TAG_PREFIX) :])
    except ValueError:
        return -1


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
