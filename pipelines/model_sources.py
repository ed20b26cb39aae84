"""Where a stage's starting weights come from: a vitpipe export, a sharded checkpoint (any ZeRO
stage, any world size), or a Hugging Face ViT directory written by `save_pretrained`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.errors import CheckpointError
from pipelines.export import load_checkpoint_model, load_exported
from pipelines.layout import EXPORT_CONFIG, EXPORT_FORMAT
from pipelines.train.checkpoint_files import check_loadable, is_checkpoint_dir, open_checkpoint
from vit_core import load_hf_dir


@dataclass(frozen=True)
class SourceModel:
    model: Any  # vit_core.VisionTransformer, eval mode, fp32, CPU
    kind: str  # "export" | "checkpoint" | "hf"
    path: str
    classes: list[str] | None = None
    info: dict[str, Any] = field(default_factory=dict)


def source_kind(path: Path) -> str:
    """Which of the three layouts `path` is; a clear error naming them when none."""
    path = Path(path)
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
    kind = source_kind(Path(path))
    if kind == "checkpoint":
        check_loadable(open_checkpoint(Path(path)))
    return kind


def load_source_model(path: str | Path) -> SourceModel:
    path = Path(path)
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
    return SourceModel(
        model, kind, str(checkpoint.path), checkpoint.meta.get("classes"), checkpoint.meta
    )
