"""Consolidated fp32 weights out of a sharded checkpoint, in the formats people load.

`safetensors` (default): `model.safetensors` + `config.json` with the ViTConfig, class names and
eval preprocessing, which `load_exported` reads with vit_core alone (no DeepSpeed). `timm` and
`hf` write state dicts that load strictly into timm's VisionTransformer / transformers'
ViTForImageClassification (a model with the MLP pretraining head exports its backbone: timm
with `num_classes=0`, HF as a `ViTModel` whose pooler is the head's hidden layer).
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path
from typing import Any

import torch

from pipelines.errors import CheckpointError
from pipelines.train.checkpoint import Checkpoint, open_checkpoint
from pipelines.train.fp32_master import fp32_master_weights

FORMATS = ("safetensors", "timm", "hf")
EXPORT_FORMAT = "vitpipe-export"


def consolidated_state_dict(checkpoint: Checkpoint) -> dict[str, torch.Tensor]:
    """fp32 weights gathered from every rank's shard (any ZeRO stage, any world size)."""
    stage = int(checkpoint.meta.get("zero_stage", 0))
    if stage == 0:
        model_file = checkpoint.path / "mp_rank_00_model_states.pt"
        # bf16/fp16 weights: their fp32 master copies are in the optimizer state.
        state = fp32_master_weights(torch.load(model_file, map_location="cpu", weights_only=False))
        return {k: v.float().contiguous() for k, v in state.items()}
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    with contextlib.redirect_stdout(io.StringIO()):  # it prints a progress report per file
        state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint.root), tag=checkpoint.tag)
    return {k: v.float().contiguous() for k, v in state.items()}


def load_checkpoint_model(checkpoint: Checkpoint):
    """A `VisionTransformer` with the checkpoint's consolidated weights (fp32, CPU)."""
    from vit_core import VisionTransformer, ViTConfig

    vit_config = checkpoint.meta.get("vit_config")
    if not vit_config:
        raise CheckpointError(f"checkpoint {checkpoint.path} has no model config in its marker")
    model = VisionTransformer(ViTConfig.from_dict(vit_config))
    model.load_state_dict(consolidated_state_dict(checkpoint), strict=True)
    return model.eval()


def export_checkpoint(source: Path, out: Path, fmt: str = "safetensors") -> dict[str, Any]:
    """Write the export; an existing non-empty OUT is refused rather than overwritten."""
    if fmt not in FORMATS:
        raise CheckpointError(f"--format {fmt!r} is not supported; allowed: {', '.join(FORMATS)}")
    checkpoint = open_checkpoint(source)
    model = load_checkpoint_model(checkpoint)
    info = export_info(
        model,
        fmt=fmt,
        classes=checkpoint.meta.get("classes"),
        source=str(checkpoint.path),
        step=checkpoint.step,
        stage=checkpoint.meta.get("stage"),
        preprocess=checkpoint.meta.get("preprocess"),
    )
    save_model(model, out, fmt=fmt, info=info)
    return info


def export_info(
    model,
    *,
    fmt: str = "safetensors",
    classes: list[str] | None = None,
    source: str | None = None,
    step: int = 0,
    stage: str | None = None,
    preprocess: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What `config.json` of an export says about the model next to it."""
    return {
        "format": EXPORT_FORMAT,
        "weights_format": fmt,
        "vit_config": model.config.to_dict(),
        "classes": classes,
        "source_checkpoint": source,
        "step": step,
        "stage": stage,
        "preprocess": preprocess,
    }


def save_model(model, out: Path, *, fmt: str = "safetensors", info: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise CheckpointError(f"{out} exists and is not empty; choose a new output directory")
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if fmt == "hf":
        from vit_core.convert import hf_config_dict, to_hf

        state = to_hf(model, base_model=model.config.head == "mlp")
        hf_config = hf_config_dict(model.config)
        hf_config["id2label"] = {str(i): n for i, n in enumerate(info.get("classes") or [])} or None
        if hf_config["id2label"] is None:
            hf_config.pop("id2label")
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=1))
        (tmp / "vitpipe.json").write_text(json.dumps(info, indent=1))
    else:
        if fmt == "timm":
            from vit_core.convert import to_timm

            state = to_timm(model, head=model.config.head != "mlp")
        else:
            state = model.state_dict()
        (tmp / "config.json").write_text(json.dumps(info, indent=1))
    save_file(
        {k: v.detach().float().contiguous() for k, v in state.items()},
        str(tmp / "model.safetensors"),
    )
    if out.exists():
        out.rmdir()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(out)


def load_exported(path: Path):
    """(model, info) from a `safetensors` export dir: a `VisionTransformer` in eval mode."""
    from safetensors.torch import load_file

    from vit_core import VisionTransformer, ViTConfig

    path = Path(path)
    config_path = path / "config.json"
    if not config_path.is_file() or not (path / "model.safetensors").is_file():
        raise CheckpointError(f"{path} is not an export dir (config.json + model.safetensors)")
    info = json.loads(config_path.read_text())
    if (
        info.get("format") != EXPORT_FORMAT
        or info.get("weights_format", "safetensors") != "safetensors"
    ):
        raise CheckpointError(
            f"{path} is not a vitpipe safetensors export; re-export with --format safetensors"
        )
    model = VisionTransformer(ViTConfig.from_dict(info["vit_config"]))
    model.load_state_dict(load_file(str(path / "model.safetensors")), strict=True)
    return model.eval(), info
