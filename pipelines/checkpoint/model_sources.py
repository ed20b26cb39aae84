"""Where a stage's starting weights come from: a vitpipe export, a sharded checkpoint (any ZeRO
stage, any world size), or a Hugging Face ViT directory written by `save_pretrained`.
`load_source_model` loads one; `source_architecture` reads its ViTConfig from what it stores,
without loading weights (the driver's checks need only that)."""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.checkpoint.export import load_checkpoint_model, load_exported
from pipelines.checkpoint.files import (
    check_loadable,
    is_checkpoint_dir,
    local_copy,
    open_checkpoint,
)
from pipelines.errors import CheckpointError
from pipelines.layout import EXPORT_CONFIG, EXPORT_FORMAT
from pipelines.storage import locate
from pipelines.transfer import download_dir
from vit_core import ViTConfig, load_hf_dir
from vit_core.convert import hf_dir_architecture


@dataclass(frozen=True)
class SourceModel:
    model: Any  # vit_core.VisionTransformer, eval mode, fp32, CPU
    kind: str  # "export" | "checkpoint" | "hf"
    path: str
    classes: list[str] | None = None
    info: dict[str, Any] = field(default_factory=dict)


def local_source(path: str | Path, cache: Path | None = None) -> Path:
    """`path` as a local directory: itself, or a model in run storage (`s3://...`) downloaded
    into `cache` (default: this machine's temp dir): an export or Hugging Face dir whole, a
    checkpoint (or the newest of a run dir) verified against its commit marker."""
    location = locate(str(path))
    if location.is_local:
        return location.local_path()
    key = hashlib.sha256(location.uri.encode()).hexdigest()[:16]
    dest = (cache or Path(tempfile.gettempdir()) / "vitpipe-sources") / key
    if location.join(EXPORT_CONFIG).is_file():
        names = [entry.name for entry in location.list_dir() if not entry.is_dir]
        download_dir(location, dest, dict.fromkeys(names))
        return dest
    if not location.exists():
        raise CheckpointError(f"--from {location.uri!r} does not exist")
    return local_copy(open_checkpoint(location), dest, names=None).path


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
    path = local_source(path)
    kind = source_kind(path)
    if kind == "checkpoint":
        check_loadable(open_checkpoint(path))
    return kind


def load_source_model(path: str | Path) -> SourceModel:
    """The model at `path` (an export, checkpoint or run dir, or Hugging Face dir; a storage
    URI is downloaded first), fp32 on the CPU in eval mode."""
    path = local_source(path)
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
    checkpoint = open_checkpoint(path)
    model = load_checkpoint_model(checkpoint)
    return SourceModel(model, kind, checkpoint.uri, checkpoint.meta.get("classes"), checkpoint.meta)


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
