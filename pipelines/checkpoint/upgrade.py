"""`vitpipe checkpoint upgrade`: rewrite checkpoint files that the pickle allowlist refuses (or
vitpipe 0.1's pickled rank states) in formats that load without running code.

This is the one place that unpickles a checkpoint file with `weights_only=False` (only a file
the allowlist refuses; the others load weights-only), once, on the user's word that the file is
trusted: whatever code the file carries runs here.

A checkpoint in object storage (a folder URI, or a file URI in one, as a refusal names it) is
downloaded and verified against its marker, upgraded locally, and the changed files uploaded
before its rewritten marker; files the upgrade replaced are removed last.
"""

from __future__ import annotations

import enum
import os
import tempfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipelines.checkpoint import marker as markers
from pipelines.checkpoint.files import local_copy, open_checkpoint
from pipelines.checkpoint.rank_state import RngState, legacy_rank, write_rank_state
from pipelines.checkpoint.safe_load import ALLOWED_GLOBALS, safe_load, vet_file
from pipelines.errors import CheckpointError
from pipelines.storage import Location, locate, temp_sibling
from pipelines.transfer import upload_many

_ATOMS = (str, bytes, bytearray, int, float, bool, complex, type(None))
_TORCH_ATOMS = (torch.Tensor, torch.dtype, torch.device, torch.Size)


@dataclass(frozen=True)
class Upgraded:
    source: str  # a local path, or a URI
    written: tuple[str, ...]
    note: str


def upgrade(path: str | Path) -> list[Upgraded]:
    """Upgrade one file, or every refused file (and 0.1 rank state) under a folder (a checkpoint,
    or a run dir: all its checkpoints); each checkpoint's marker is then rewritten with the new
    files' sizes and sha256. A storage URI names a checkpoint folder or a file in one."""
    location = locate(str(path))
    if not location.is_local:
        return _upgrade_stored(location)
    path = location.local_path()
    if path.is_dir():
        files = [p for p in sorted(path.rglob("*.pt")) if _needs_upgrade(p)]
    elif path.is_file():
        files = [path]
    else:
        raise CheckpointError(f"{path} does not exist")
    done = [_upgrade_file(file) for file in files]
    for folder in sorted({f for f in map(_checkpoint_folder, files) if f is not None}):
        _rewrite_marker(folder)
    return done


def _checkpoint_folder(file: Path) -> Path | None:
    """The checkpoint folder (the one with a marker) that `file` belongs to, if any."""
    for folder in file.parents:
        if (folder / markers.MARKER).is_file():
            return folder
    return None


def _needs_upgrade(path: Path) -> bool:
    if legacy_rank(path.name) is not None:
        return True
    try:
        vet_file(path)
    except CheckpointError:
        return True
    return False


def _upgrade_file(path: Path) -> Upgraded:
    try:
        obj = safe_load(path)  # a 0.1 rank state usually passes: then no code runs at all
    except CheckpointError:
        obj = torch.load(path, map_location="cpu", weights_only=False)  # trusted by the user
    rank = legacy_rank(path.name)
    if rank is not None and isinstance(obj, dict) and "loader" in obj and "rng" in obj:
        state = RngState.from_legacy(obj["rng"])
        written = write_rank_state(path.parent, rank, obj["loader"], state)
        path.unlink()
        return Upgraded(str(path), tuple(map(str, written)), "rank state now JSON + safetensors")
    converted: list[str] = []
    plain = _plain(obj, converted)
    tmp = temp_sibling(path)
    torch.save(plain, tmp)
    try:
        vet_file(tmp)
    except CheckpointError as err:
        tmp.unlink()
        raise CheckpointError(f"{path} could not be made safe: {err}") from None
    os.replace(tmp, path)
    kinds = sorted(set(converted))
    note = f"re-saved; {', '.join(kinds)} stored as plain data" if kinds else "re-saved"
    return Upgraded(str(path), (str(path),), note)


def _plain(obj: Any, converted: list[str]) -> Any:
    """`obj` with every object weights-only loading refuses turned into plain data."""
    if type(obj) in _ATOMS or isinstance(obj, _TORCH_ATOMS):
        return obj
    name = f"{type(obj).__module__}.{type(obj).__qualname__}"
    if name in ALLOWED_GLOBALS:
        return obj
    if isinstance(obj, np.ndarray) and obj.dtype != object:
        return obj
    if isinstance(obj, dict):
        items = [(_plain(k, converted), _plain(v, converted)) for k, v in obj.items()]
        return OrderedDict(items) if isinstance(obj, OrderedDict) else dict(items)
    if isinstance(obj, list | tuple | set | frozenset):
        items = [_plain(v, converted) for v in obj]
        if isinstance(obj, set | frozenset):
            return set(items)
        return list(items) if isinstance(obj, list) else tuple(items)
    converted.append(name)
    if isinstance(obj, enum.Enum):
        return _plain(obj.value, converted)
    if isinstance(obj, np.ndarray | np.generic):
        return _plain(obj.tolist(), converted)
    if hasattr(obj, "__dict__"):
        return {k: _plain(v, converted) for k, v in vars(obj).items()}
    return str(obj)


def _rewrite_marker(folder: Path) -> None:
    old = markers.read(folder)
    world_size = int(old["world_size"])
    new = markers.build(
        int(old["step"]),
        world_size,
        markers.reports_by_name(folder, world_size),
        old.get("meta", {}),
    )
    problem = markers.check(folder, new, hashes=False).problem
    if problem:
        raise CheckpointError(f"checkpoint {folder} after the upgrade: {problem}")
    markers.write(folder, new)


def _upgrade_stored(location: Location) -> list[Upgraded]:
    """`upgrade` of a checkpoint in storage, through a verified local copy."""
    folder = location if location.join(markers.MARKER).is_file() else location.parent
    if not folder.join(markers.MARKER).is_file():
        raise CheckpointError(
            f"{location.uri} is not a checkpoint folder or a file in one (no {markers.MARKER} "
            "there); upgrade a run dir in storage checkpoint by checkpoint"
        )
    checkpoint = open_checkpoint(folder)
    with tempfile.TemporaryDirectory(prefix="vitpipe-upgrade-") as scratch:
        local = local_copy(checkpoint, Path(scratch), names=None)
        target = local.path if folder.uri == location.uri else local.path / location.name
        done = upgrade(target)
        if not done:
            return []
        marker = markers.read(local.path)
        changed = [
            name for name, entry in marker["files"].items() if checkpoint.files.get(name) != entry
        ]
        upload_many([(local.path / name, folder.join(name)) for name in changed])
        markers.write(folder, marker)
        for name in sorted(set(checkpoint.files) - set(marker["files"])):
            folder.join(name).delete()

        def stored(path: str) -> str:
            return folder.join(Path(path).relative_to(local.path).as_posix()).uri

        return [Upgraded(stored(d.source), tuple(map(stored, d.written)), d.note) for d in done]
