"""Read a transformers `save_pretrained` directory (ViT, or DeiT with teacher heads) without
importing transformers: config.json, and the weights as safetensors (preferred) or a torch file
loaded with `weights_only=True`, either whole or sharded under an index. Every weight file must
be a regular file inside the directory: index entries that are absolute, climb out with `..`,
or are symlinks leading out are refused."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from ..config import ViTConfig
from ..model import VisionTransformer
from .hf_interop import config_from_hf_fields, from_hf_state, normalize_hf_keys

INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def _inside(root: Path, name: str, source: str) -> Path:
    """`root / name`, refused unless it resolves (symlinks followed) to a file inside root."""
    path = root / name
    real_root = root.resolve()
    if os.path.isabs(name) or not path.resolve().is_relative_to(real_root):
        hint = ""
        if path.is_symlink():
            hint = " (a symlink out of it: copy the real files in, e.g. hf download --local-dir)"
        raise ValueError(
            f"{root}: {source} names {name!r}, which is outside the directory{hint}; "
            "refusing to read it"
        )
    if not path.is_file():
        raise ValueError(f"{root}: {source} names {name!r}, which is not a file")
    return path


def weight_files(root: Path) -> list[Path]:
    """The weight files of a save_pretrained dir, each checked to lie inside it."""
    for index_name in INDEX_FILES:
        if (root / index_name).is_file():
            index = json.loads(_inside(root, index_name, "the directory").read_text())
            weight_map = index.get("weight_map") if isinstance(index, dict) else None
            if not isinstance(weight_map, dict) or not all(
                isinstance(v, str) for v in weight_map.values()
            ):
                raise ValueError(f"{root / index_name}: no weight_map of tensor -> file name")
            return [_inside(root, name, index_name) for name in sorted(set(weight_map.values()))]
    for name in WEIGHT_FILES:
        if (root / name).exists():
            return [_inside(root, name, "the directory")]
    raise ValueError(f"{root}: no model.safetensors or pytorch_model.bin (a save_pretrained dir?)")


def read_weight_file(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of one file: safetensors, or a torch file read with weights_only=True."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file  # lazy: vit_core imports torch only

        return load_file(str(path), device="cpu")
    return torch.load(path, map_location="cpu", weights_only=True)


def _read_config(root: Path) -> dict:
    if not (root / "config.json").is_file():
        raise ValueError(f"{root}: no config.json (not a Hugging Face save_pretrained directory)")
    return json.loads(_inside(root, "config.json", "the directory").read_text())


def _architecture(cfg: dict, shapes: Mapping[str, Sequence[int]]) -> ViTConfig:
    """The config of a save_pretrained dir: its head follows the classifier its weights hold
    (DeiT's two, one linear, or a pooler, whose width is the hidden layer's)."""
    if "cls_classifier.weight" in shapes:
        num_classes = shapes["cls_classifier.weight"][0]
        return config_from_hf_fields(cfg, num_classes, pooler=False, distilled=True)
    if "classifier.weight" in shapes:
        return config_from_hf_fields(cfg, shapes["classifier.weight"][0], pooler=False)
    num_classes = len(cfg.get("id2label") or {}) or int(cfg.get("num_labels") or 2)
    pooler = shapes.get("pooler.dense.weight")
    hidden = pooler[0] if pooler is not None else None
    return config_from_hf_fields(cfg, num_classes, pooler is not None, hidden)


def _weight_shapes(root: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape: safetensors headers only; a torch file is read whole."""
    from safetensors import safe_open  # lazy: vit_core imports torch only

    shapes: dict[str, tuple[int, ...]] = {}
    for file in weight_files(root):
        if file.suffix != ".safetensors":
            shapes.update({k: tuple(v.shape) for k, v in read_weight_file(file).items()})
            continue
        with safe_open(str(file), framework="pt") as tensors:
            for name in tensors.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
                shapes[name] = tuple(tensors.get_slice(name).get_shape())
    return shapes


def hf_dir_architecture(path: str | os.PathLike[str]) -> ViTConfig:
    """The ViTConfig `load_hf_dir` would build, from config.json and the weights' names and
    shapes, without reading their values (where the files are safetensors)."""
    root = Path(path)
    return _architecture(_read_config(root), normalize_hf_keys(_weight_shapes(root)))


def load_hf_dir(path: str | os.PathLike[str]) -> VisionTransformer:
    """Our model from a transformers `save_pretrained` directory (ViTModel,
    ViTForImageClassification or DeiTForImageClassificationWithTeacher)."""
    root = Path(path)
    cfg = _read_config(root)
    state: dict[str, torch.Tensor] = {}
    for file in weight_files(root):
        state.update(read_weight_file(file))
    state = normalize_hf_keys(state)
    config = _architecture(cfg, {k: tuple(v.shape) for k, v in state.items()})
    return from_hf_state(config, state)
