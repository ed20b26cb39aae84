"""The stored form of a checkpoint and its commit protocol (no policy: that is the Checkpointer).

`checkpoints/step_NNNNNNN/` in run storage (a local or shared path, or a URI such as
`s3://bucket/run/checkpoints/...`) holds DeepSpeed's per-rank files plus each rank's own state
(`rank_state.py`: loader position and RNG states, as JSON + safetensors). It counts only once
rank 0 has written `COMMITTED.json` (`marker.py`: every file with its size, sha256 and writer,
plus metadata, progress included), after every rank reported the files it wrote (and, on remote
storage, uploaded them). `checkpoints/latest` (a tag) is then replaced atomically and old
committed ones are pruned. A folder whose marker is missing, or whose files no longer match it,
is never loaded. What reads a checkpoint's files works on a local copy (`local_copy`): the
folder itself where storage is local, else the files downloaded and verified against the marker.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.checkpoint import marker as markers
from pipelines.checkpoint.safe_load import vet_folder
from pipelines.errors import CheckpointError
from pipelines.layout import (
    CHECKPOINTS_DIR,
    LATEST,
    MARKER,
    UNIVERSAL_DIR,
    checkpoint_tag,
    step_of_tag,
)
from pipelines.storage import Location, as_location, locate
from pipelines.transfer import FileDigest, download_many

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Checkpoint:
    """A committed checkpoint folder and what its marker says."""

    location: Location
    marker: dict[str, Any]
    origin: str | None = None  # a local copy's: the URI it was downloaded from

    @property
    def uri(self) -> str:
        return self.location.uri

    @property
    def shown(self) -> str:
        """What messages call it: its URI in storage, also for a local copy."""
        return self.origin or self.uri

    @property
    def path(self) -> Path:
        """The folder on this machine (a local or shared filesystem); see `local_copy`."""
        return self.location.local_path()

    @property
    def tag(self) -> str:
        return self.location.name

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

    @property
    def files(self) -> dict[str, Any]:
        return self.marker["files"]


def checkpoints_root(run_dir: str | Path | Location) -> Location:
    return as_location(run_dir).join(CHECKPOINTS_DIR)


def list_checkpoints(root: str | Path | Location, *, warn: bool = True) -> list[Checkpoint]:
    """Committed, intact checkpoints under `root`, oldest first; torn ones warned about."""
    found = []
    for folder in _step_folders(as_location(root)):
        problem = _problem(folder)
        if problem is None:
            found.append(Checkpoint(folder, markers.read(folder)))
        elif warn:
            log.warning("skipping checkpoint %s: %s", folder.uri, problem)
    return sorted(found, key=lambda c: c.step)


def latest_checkpoint(root: str | Path | Location) -> Checkpoint | None:
    committed = list_checkpoints(root)
    return committed[-1] if committed else None


def open_checkpoint(path: str | Path | Location) -> Checkpoint:
    """A checkpoint folder given by the user (or a run dir / checkpoints dir: its newest)."""
    location = as_location(path)
    if not location.join(MARKER).is_file():
        for root in (location.join(CHECKPOINTS_DIR), location):
            newest = latest_checkpoint(root)
            if newest is not None:
                return newest
    if not location.exists():
        raise CheckpointError(f"checkpoint {location.uri!r} does not exist")
    problem = _problem(location)
    if problem:
        raise CheckpointError(f"checkpoint {location.uri!r} cannot be loaded: {problem}")
    return Checkpoint(location, markers.read(location))


def is_checkpoint_dir(path: str | Path | Location) -> bool:
    """Whether `path` looks like a checkpoint folder, a checkpoints dir or a run dir."""
    location = as_location(path)
    return (
        location.join(MARKER).is_file()
        or location.join(CHECKPOINTS_DIR).exists()
        or any(e.is_dir and step_of_tag(e.name) is not None for e in location.list_dir())
    )


def verify(folder: str | Path | Location, *, hashes: bool = False) -> str | None:
    """Why `folder` cannot be loaded, or None when its marker and files agree (sizes; sha256 too
    with `hashes` on a local folder, which reads every file)."""
    return _problem(as_location(folder), hashes=hashes)


def check_loadable(checkpoint: Checkpoint) -> None:
    """Before a local checkpoint is read: every file matches its marker's sha256 (a 0.1 marker
    has only sizes: noticed once) and no torch file in it could run code when unpickled. (A
    remote one is verified as `local_copy` downloads it, and vetted by what loads it.)"""
    result = markers.check(checkpoint.location, checkpoint.marker, hashes=True)
    if result.problem:
        raise CheckpointError(f"checkpoint {checkpoint.shown} cannot be loaded: {result.problem}")
    if result.notice:
        log.warning("%s", result.notice)
    if checkpoint.location.is_local:
        vet_folder(checkpoint.path, origin=checkpoint.origin)


def files_for_rank(checkpoint: Checkpoint, rank: int | None) -> list[str]:
    """The files a rank loads: its own (DeepSpeed's `zero_pp_rank_R_*`, our `vitpipe_rankR.*`)
    and the shared ones (the model states, configs); every file for `rank=None`."""
    names = sorted(checkpoint.files)
    if rank is None:
        return names
    return [n for n in names if markers.rank_in_name(n) in (None, rank)]


def local_copy(checkpoint: Checkpoint, dest: Path, *, names: list[str] | None) -> Checkpoint:
    """The checkpoint as local files: itself where storage is local; else `dest/<tag>/`
    holding the files named (every file for None), each verified against the marker."""
    if checkpoint.location.is_local:
        return checkpoint
    folder = dest / checkpoint.tag
    items = []
    wanted = sorted(checkpoint.files) if names is None else names
    for name in (n for n in wanted if n in checkpoint.files):
        entry = checkpoint.files[name]
        hashed = isinstance(entry, dict) and "sha256" in entry  # a 0.1 marker: sizes only
        expect = FileDigest(entry["size"], entry["sha256"]) if hashed else None
        local = folder / name
        if _already_there(local, expect):
            continue  # an earlier attempt of this resume downloaded it
        items.append((checkpoint.location.join(name), local, expect))
    download_many(items)
    folder.mkdir(parents=True, exist_ok=True)
    markers.write(folder, checkpoint.marker)
    return Checkpoint(locate(str(folder)), checkpoint.marker, origin=checkpoint.uri)


def _already_there(local: Path, expect: FileDigest | None) -> bool:
    return (
        expect is not None
        and local.is_file()
        and local.stat().st_size == expect.size
        and markers.digest(local)["sha256"] == expect.sha256
    )


def prepare_folder(root: Location, step: int) -> Location:
    """Rank 0, before a save: no folder for `step` (a torn earlier attempt is removed, so its
    files are never mixed in)."""
    folder = root.join(checkpoint_tag(step))
    folder.delete_tree()
    return folder


def commit(
    folder: Location, step: int, reports: list[dict[str, dict[str, Any]]], meta: dict[str, Any]
) -> None:
    """Rank 0, once every rank reported (and stored) the files it wrote (`reports[r]`, from
    `marker.report`): the marker, then `latest`."""
    marker = markers.build(step, len(reports), reports, meta)
    problem = markers.check(folder, marker, hashes=False).problem
    if problem:
        raise CheckpointError(f"checkpoint {folder.uri} was not committed: {problem}")
    markers.write(folder, marker)
    folder.parent.join(LATEST).write_text_atomic(folder.name + "\n")


def prune(root: Location, keep_last: int) -> None:
    """Keep the newest `keep_last` committed checkpoints (and their universal conversions);
    torn folders older than the newest committed one can never be used and go too."""
    committed = list_checkpoints(root, warn=False)
    newest = committed[-1].step if committed else None
    for old in committed[:-keep_last]:
        old.location.delete_tree()
    for folder in _step_folders(root):
        step = step_of_tag(folder.name)
        if newest is not None and step < newest and not folder.join(MARKER).is_file():
            folder.delete_tree()
    keep = {c.tag for c in list_checkpoints(root, warn=False)}
    universal = root.join(UNIVERSAL_DIR)
    for entry in universal.list_dir():
        if entry.is_dir and entry.name not in keep:
            universal.join(entry.name).delete_tree()


def _problem(folder: Location, *, hashes: bool = False) -> str | None:
    try:
        marker = markers.read(folder)
    except CheckpointError as err:
        return str(err).split(": ", 1)[-1]
    return markers.check(folder, marker, hashes=hashes).problem


def _step_folders(root: Location) -> list[Location]:
    return [
        root.join(e.name) for e in root.list_dir() if e.is_dir and step_of_tag(e.name) is not None
    ]
