"""Sharded checkpoints with a commit protocol.

`checkpoints/step_NNNNNNN/` holds DeepSpeed's per-rank files plus one `vitpipe_rankNNNNN.pt` per
rank (loader position, RNG states). It counts only once rank 0 has written `COMMITTED.json`
(every file with its size, plus metadata), which happens after all ranks reported success.
`checkpoints/latest` (a tag) is then replaced atomically and old committed ones are pruned.
A folder whose marker is missing, or whose files no longer match it, is never loaded.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipelines.distributed import DistContext
from pipelines.errors import CheckpointError

log = logging.getLogger(__name__)

MARKER = "COMMITTED.json"
LATEST = "latest"
UNIVERSAL_DIR = "universal"
_TAG_PREFIX = "step_"


def tag_for(step: int) -> str:
    return f"{_TAG_PREFIX}{step:07d}"


def rank_state_name(rank: int) -> str:
    return f"vitpipe_rank{rank:05d}.pt"


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
        _torch_save_atomic(rank_state, path / rank_state_name(ctx.rank))
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
    return torch.load(
        checkpoint.path / rank_state_name(rank), map_location="cpu", weights_only=False
    )


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


def _torch_save_atomic(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)
