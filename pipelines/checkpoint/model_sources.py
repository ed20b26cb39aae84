"""Where a stage's starting weights come from: a vitpipe export, a sharded checkpoint (any ZeRO
stage, any world size), or a Hugging Face ViT directory written by `save_pretrained`.
`load_source_model` loads one; `source_architecture` reads its ViTConfig from what it stores,
without loading weights (the driver's checks need only that).

A source in storage (`s3://...`) is read from a local copy in this user's own cache folder (in
the temp dir, mode 0700), one folder per URI, which always holds exactly what the source holds
now: a file the source no longer lists is removed before anything is loaded; a checkpoint's
files are reused only when they match the sha256 its marker records, an export's weights only
when they match the sha256 its config.json records (an older export records none); every other
file is downloaded again each time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.checkpoint.export import load_checkpoint_model, load_exported, recorded_weights
from pipelines.checkpoint.files import (
    Checkpoint,
    check_loadable,
    is_checkpoint_dir,
    local_copy,
    open_checkpoint,
)
from pipelines.errors import CheckpointError
from pipelines.layout import EXPORT_CONFIG, EXPORT_FORMAT, MARKER
from pipelines.storage import Location, locate
from pipelines.transfer import FileDigest, download_dir, download_file, file_digest
from vit_core import ViTConfig, load_hf_dir
from vit_core.convert import hf_dir_architecture

CACHE_NAME = "vitpipe-sources"


@dataclass(frozen=True)
class SourceModel:
    model: Any  # vit_core.VisionTransformer, eval mode, fp32, CPU
    kind: str  # "export" | "checkpoint" | "hf"
    path: str
    classes: list[str] | None = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Local:
    """A source as a local directory, and the URI it was copied from (None: it is local)."""

    path: Path
    origin: str | None = None


def local_source(path: str | Path, cache: Path | None = None) -> Path:
    """`path` as a local directory: itself, or a model in run storage (`s3://...`) copied into
    `cache` (default: this user's folder in the temp dir): an export or Hugging Face dir whole,
    a checkpoint (or the newest of a run dir) verified against its commit marker."""
    return _local(path, cache).path


def _local(path: str | Path, cache: Path | None = None) -> _Local:
    location = locate(str(path))
    if location.is_local:
        return _Local(location.local_path())
    key = hashlib.sha256(location.uri.encode()).hexdigest()[:16]
    dest = (cache or _cache_root()) / key
    if location.join(EXPORT_CONFIG).is_file():
        _mirror(location, dest)
        return _Local(dest, location.uri)
    if not location.exists():
        raise CheckpointError(f"--from {location.uri!r} does not exist")
    checkpoint = open_checkpoint(location)
    _keep_only(dest, {checkpoint.tag})  # an older checkpoint of the same run dir
    listed = {name.split("/")[0] for name in checkpoint.files}
    _keep_only(dest / checkpoint.tag, listed | {MARKER})
    return _Local(local_copy(checkpoint, dest, names=None).path, checkpoint.uri)


def _cache_root() -> Path:
    """This user's cache folder in the shared temp dir: made private, and refused if anyone
    else made it (they could swap what is loaded from it)."""
    root = Path(tempfile.gettempdir()) / f"{CACHE_NAME}-{os.getuid()}"
    root.mkdir(mode=0o700, exist_ok=True)
    info = root.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise CheckpointError(
            f"{root} is not a private directory of this user; remove it (models from storage "
            "are cached there)"
        )
    return root


def _mirror(location: Location, dest: Path) -> None:
    """`dest` made to hold what the directory at `location` holds now (one listing): files it
    no longer lists removed first, recorded weights reused when their sha256 matches, every
    other file downloaded again."""
    listed = [e.name for e in location.list_dir() if not e.is_dir and not e.name.startswith(".")]
    _keep_only(dest, set(listed))
    download_file(location.join(EXPORT_CONFIG), dest / EXPORT_CONFIG)
    recorded = recorded_weights(dest / EXPORT_CONFIG)
    wanted: dict[str, FileDigest | None] = {
        name: recorded.get(name)
        for name in listed
        if name != EXPORT_CONFIG and not _verified(dest / name, recorded.get(name))
    }
    download_dir(location, dest, wanted)


def _verified(local: Path, expect: FileDigest | None) -> bool:
    return (
        expect is not None
        and local.is_file()
        and local.stat().st_size == expect.size
        and file_digest(local) == expect
    )


def _keep_only(folder: Path, names: set[str]) -> None:
    """Remove what `folder` holds beyond `names` (hidden files are other downloads in flight)."""
    if not folder.is_dir():
        return
    for child in folder.iterdir():
        if child.name in names or child.name.startswith("."):
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def _checkpoint(source: _Local) -> Checkpoint:
    """The checkpoint at a local source; a copy remembers the URI it came from."""
    return dataclasses.replace(open_checkpoint(source.path), origin=source.origin)


def source_kind(path: Path) -> str:
    """Which of the three layouts `path` is; a clear error naming them when none."""
    path = local_source(path)
    if not path.exists():
        raise CheckpointError(f"--from {str(path)!r} does not exist")
    config_file = path / EXPORT_CONFIG
    if config_file.is_file():
        try:
            config = json.loads(config_file.read_text())
        except json.JSONDecodeError:
            config = {}
        if config.get("format") == EXPORT_FORMAT:
            return "export"
        if config.get("model_type") == "vit" or "hidden_size" in config:
            return "hf"
    if is_checkpoint_dir(path):
        return "checkpoint"
    raise CheckpointError(
        f"--from {str(path)!r} is not a model: expected a vitpipe export (config.json + "
        "model.safetensors), a checkpoint dir (COMMITTED.json) or run dir, or a Hugging Face "
        "ViT dir (config.json with model_type 'vit')"
    )


def check_source(path: str | Path) -> str:
    """`source_kind`, and for a checkpoint `check_loadable` (hashes, pickle allowlist): what a
    driver runs before it starts workers that load the model."""
    source = _local(path)
    kind = source_kind(source.path)
    if kind == "checkpoint":
        check_loadable(_checkpoint(source))
    return kind


def load_source_model(path: str | Path) -> SourceModel:
    """The model at `path` (an export, checkpoint or run dir, or Hugging Face dir; a storage
    URI is downloaded first), fp32 on the CPU in eval mode."""
    source = _local(path)
    path = source.path
    kind = source_kind(path)
    if kind == "export":
        model, info = load_exported(path)
        return SourceModel(model, kind, str(path), info.get("classes"), info)
    if kind == "hf":
        try:
            model = load_hf_dir(path)
        except ValueError as err:
            raise CheckpointError(f"--from {str(path)!r}: {err}") from None
        config = json.loads((path / "config.json").read_text())
        labels = config.get("id2label") or {}
        classes = [labels[k] for k in sorted(labels, key=int)] if labels else None
        return SourceModel(model.eval(), kind, str(path), classes, {"hf_config": config})
    checkpoint = _checkpoint(source)
    model = load_checkpoint_model(checkpoint)
    return SourceModel(
        model, kind, checkpoint.shown, checkpoint.meta.get("classes"), checkpoint.meta
    )


def source_architecture(path: str | Path) -> ViTConfig:
    """The ViTConfig of the model at `path`, as `load_source_model` would build it, read from
    what the source stores: an export's config.json, a checkpoint marker's `meta.vit_config`,
    or a Hugging Face dir's config.json with its weights' names and shapes (not their values)."""
    path = local_source(path)
    kind = source_kind(path)
    if kind == "export":
        return ViTConfig.from_dict(json.loads((path / EXPORT_CONFIG).read_text())["vit_config"])
    if kind == "hf":
        try:
            return hf_dir_architecture(path)
        except ValueError as err:
            raise CheckpointError(f"--from {str(path)!r}: {err}") from None
    checkpoint = open_checkpoint(path)
    saved = checkpoint.meta.get("vit_config")
    if not saved:
        raise CheckpointError(f"checkpoint {checkpoint.uri} has no model config in its marker")
    return ViTConfig.from_dict(saved)
