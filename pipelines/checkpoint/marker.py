"""The commit marker of a checkpoint folder, `COMMITTED.json`: which files make up the checkpoint,
each with its size and sha256, and who wrote it.

Saving: every rank calls `report(folder, names)` for the files it wrote (hashing them), rank 0
gathers the reports and writes `build(...)` with `write(...)` once every rank reported. Loading:
`check(folder, marker)` requires every file each rank must have written and verifies the size
(and, with `hashes=True`, the sha256) of every listed file. A vitpipe 0.1 marker lists sizes only;
it is accepted, with a notice that its files' contents cannot be verified.

    {"format": 2, "step": 400, "world_size": 2, "meta": {...},
     "files": {"vitpipe_rank00001.json": {"size": 901, "sha256": "...", "rank": 1}, ...}}
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from pipelines.checkpoint.rank_state import legacy_name
from pipelines.errors import CheckpointError
from pipelines.layout import MARKER
from pipelines.storage import Location, as_location
from pipelines.transfer import file_digest

FORMAT = 2
_CHUNK = 1 << 20
_RANK_IN_NAME = re.compile(r"(?:zero_pp_rank_|vitpipe_rank)0*(\d+)")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Check:
    """What `check` found: `problem` (why the folder cannot be loaded) or None; `notice` (a
    one-line remark worth logging once, e.g. a 0.1 marker without hashes) or None."""

    problem: str | None = None
    notice: str | None = None


def digest(path: Path) -> dict[str, Any]:
    """{"size", "sha256"} of one local file."""
    return file_digest(Path(path)).to_json()


def report(folder: Path, names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """One rank's report: {name: {size, sha256}} of the files (relative to `folder`) it wrote."""
    folder = Path(folder)
    return {name: digest(folder / _safe_name(name)) for name in sorted(names)}


def union(reports: Sequence[Mapping[str, Mapping[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Every rank's files in one table, each with the rank that reported it; two ranks reporting
    one name with different contents is an error."""
    files: dict[str, dict[str, Any]] = {}
    for rank, files_of_rank in enumerate(reports):
        for name, entry in files_of_rank.items():
            _safe_name(name)
            new = {"size": int(entry["size"]), "sha256": str(entry["sha256"]), "rank": rank}
            old = files.get(name)
            if old is not None and (old["size"], old["sha256"]) != (new["size"], new["sha256"]):
                raise CheckpointError(
                    f"ranks {old['rank']} and {rank} both wrote {name} with different contents"
                )
            files.setdefault(name, new)
    return files


def build(
    step: int,
    world_size: int,
    reports: Sequence[Mapping[str, Mapping[str, Any]]],
    meta: Mapping[str, Any],
) -> dict[str, Any]:
    """The marker rank 0 writes once all `world_size` ranks reported (reports[r] is rank r's)."""
    if len(reports) != world_size:
        raise CheckpointError(f"{len(reports)} of {world_size} ranks reported their files")
    return {
        "format": FORMAT,
        "step": int(step),
        "world_size": int(world_size),
        "files": union(reports),
        "meta": dict(meta),
    }


def write(folder: Path | Location, marker: Mapping[str, Any]) -> None:
    """Write the marker atomically (the checkpoint counts from this moment)."""
    as_location(folder).join(MARKER).write_json_atomic(dict(marker))


def read(folder: Path | Location) -> dict[str, Any]:
    """The marker of `folder`; CheckpointError when missing or not a marker."""
    path = as_location(folder).join(MARKER)
    if not path.is_file():
        raise CheckpointError(f"{folder}: no completion marker (torn while saving)")
    try:
        marker = path.read_json()
        int(marker["step"])
        int(marker["world_size"])
        if not isinstance(marker["files"], dict):
            raise TypeError("files is not a mapping")
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path.uri}: unreadable completion marker ({err})") from None
    return marker


def rank_in_name(name: str) -> int | None:
    """The rank a per-rank file belongs to in DeepSpeed's (`zero_pp_rank_R_*`) and vitpipe's
    (`vitpipe_rankR.*`) naming; None for a file every rank shares (model states, configs)."""
    match = _RANK_IN_NAME.search(PurePosixPath(name).name)
    return int(match.group(1)) if match else None


def writer_rank(name: str) -> int:
    """The rank that writes `name` (rank 0 for a shared file): for a commit by one process that
    sees every rank's files (vitpipe 0.1's flow on a shared disk)."""
    rank = rank_in_name(name)
    return 0 if rank is None else rank


def reports_by_name(folder: Path, world_size: int, *, exclude: Iterable[str] = (MARKER,)) -> list:
    """Per-rank reports of every file under `folder`, attributed by `writer_rank`."""
    folder = Path(folder)
    skip = set(exclude)
    names = [
        p.relative_to(folder).as_posix()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in skip and not p.name.startswith(".")
    ]
    by_rank: list[list[str]] = [[] for _ in range(world_size)]
    for name in names:
        rank = writer_rank(name)
        by_rank[rank if rank < world_size else 0].append(name)
    return [report(folder, group) for group in by_rank]


def required_files(world_size: int, zero_stage: int) -> list[str]:
    """Names (regular expressions) every complete checkpoint has: each rank's own state (JSON, or
    vitpipe 0.1's `.pt`) and DeepSpeed 0.19.8's per-rank files for the ZeRO stage."""
    required = []
    for rank in range(world_size):
        required.append(re.escape(legacy_name(rank)).replace(r"\.pt", r"\.(json|pt)"))
        if zero_stage >= 1:
            required.append(rf"(bf16_)?zero_pp_rank_{rank}_mp_rank_00_optim_states\.pt")
        if zero_stage == 3:
            required.append(rf"zero_pp_rank_{rank}_mp_rank_00_model_states\.pt")
    if zero_stage < 3:
        required.append(r"mp_rank_00_model_states\.pt")
    return required


def check(folder: Path | Location, marker: Mapping[str, Any], *, hashes: bool = True) -> Check:
    """Whether `folder`'s files agree with `marker` (one listing gives every size); hashing
    every file costs a full read, so listing checkpoints passes `hashes=False` and loading a
    local one passes True (a remote one is verified file by file as it is downloaded)."""
    location = as_location(folder)
    files = marker.get("files")
    if not isinstance(files, dict):
        return Check("the marker lists no files")
    legacy = marker.get("format") is None
    try:
        world_size = int(marker["world_size"])
        zero_stage = int(marker.get("meta", {}).get("zero_stage", 0))
        entries = {_safe_name(name): _entry(entry, legacy) for name, entry in files.items()}
    except (CheckpointError, KeyError, TypeError, ValueError) as err:
        return Check(f"unreadable completion marker ({err})")
    if not legacy and marker.get("format") != FORMAT:
        return Check(f"marker format {marker.get('format')!r} is newer than this vitpipe reads")
    for pattern in required_files(world_size, zero_stage):
        if not any(re.fullmatch(pattern, name) for name in entries):
            shown = pattern.replace("\\", "")
            return Check(f"the marker does not list {shown}, which every such checkpoint has")
    sizes = _sizes(location, entries)
    for name, (size, sha256) in entries.items():
        if name not in sizes:
            return Check(f"file {name} is missing")
        if sizes[name] != size:
            return Check(f"file {name} has {sizes[name]} bytes, the marker says {size}")
        changed = hashes and location.is_local and sha256 is not None
        if changed and digest(location.local_path() / name)["sha256"] != sha256:
            return Check(f"file {name} does not match its sha256 in the marker (changed on disk)")
    notice = None
    if legacy:
        notice = (
            f"checkpoint {location.uri} has a vitpipe 0.1 marker: it lists sizes only, no "
            "hashes, so its files' contents are not verified"
        )
    return Check(None, notice)


def _sizes(folder: Location, entries: Mapping[str, Any]) -> dict[str, int]:
    """{name: size} of the files in `folder` that `entries` names (names may hold a `/`)."""
    sizes: dict[str, int] = {}
    listed: dict[str, dict[str, int]] = {}
    for name in entries:
        parent, _, base = name.rpartition("/")
        if parent not in listed:
            where = folder.join(*parent.split("/")) if parent else folder
            listed[parent] = {e.name: e.size for e in where.list_dir() if not e.is_dir}
        if base in listed[parent]:
            sizes[name] = listed[parent][base]
    return sizes


def _entry(entry: Any, legacy: bool) -> tuple[int, str | None]:
    if legacy:
        if isinstance(entry, bool) or not isinstance(entry, int):
            raise ValueError(f"size {entry!r} is not an integer")
        return entry, None
    size, sha256 = entry["size"], entry["sha256"]
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ValueError(f"size {size!r} is not an integer")
    if not isinstance(sha256, str) or not _SHA256.match(sha256):
        raise ValueError(f"sha256 {sha256!r} is not a hex digest")
    return size, sha256


def _safe_name(name: str) -> str:
    """A name inside the checkpoint folder: relative, no `..`, no backslashes."""
    path = PurePosixPath(name)
    if not name or path.is_absolute() or ".." in path.parts or "\\" in name:
        raise CheckpointError(f"file name {name!r} in a checkpoint marker leaves its folder")
    return name
