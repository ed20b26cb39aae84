"""Consolidated fp32 weights out of a sharded checkpoint, in the formats people load.

`safetensors` (default): `model.safetensors` + `config.json` with the ViTConfig, class names and
eval preprocessing, which `load_exported` reads with vit_core alone (no DeepSpeed). `timm` and
`hf` write state dicts that load strictly into timm's VisionTransformer (plain or hybrid) or
VisionTransformerDistilled / transformers' ViTForImageClassification or, for a distilled model,
DeiTForImageClassificationWithTeacher (a model with the MLP pretraining head exports its
backbone: timm with `num_classes=0`, HF as a `ViTModel` whose pooler is the head's hidden
layer). transformers has no hybrid ViT, so a hybrid refuses `hf`.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

import vit_core
from pipelines.checkpoint.files import (
    Checkpoint,
    check_loadable,
    local_copy,
    open_checkpoint,
)
from pipelines.checkpoint.fp32_master import fp32_master_weights
from pipelines.checkpoint.safe_load import safe_load, weights_only_loads
from pipelines.errors import CheckpointError
from pipelines.layout import EXPORT_CONFIG, EXPORT_FORMAT, EXPORT_WEIGHTS
from pipelines.storage import locate
from pipelines.transfer import FileDigest, file_digest, upload_dir

FORMATS = ("safetensors", "timm", "hf")


def consolidated_state_dict(checkpoint: Checkpoint) -> dict[str, torch.Tensor]:
    """fp32 weights gathered from every rank's shard (any ZeRO stage, any world size).

    Nothing read here can run code: the files must match the marker's hashes, pass the pickle
    allowlist, and are loaded weights-only (DeepSpeed's zero_to_fp32 too). Non-finite weights
    are refused."""
    check_loadable(checkpoint)
    stage = int(checkpoint.meta.get("zero_stage", 0))
    if stage == 0:
        model_file = checkpoint.path / "mp_rank_00_model_states.pt"
        # bf16/fp16 weights: their fp32 master copies are in the optimizer state.
        state = fp32_master_weights(safe_load(model_file))
    else:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        # It prints a progress report per file, and progress bars.
        quiet = contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO())
        with quiet[0], quiet[1], weights_only_loads():
            state = get_fp32_state_dict_from_zero_checkpoint(
                str(checkpoint.root), tag=checkpoint.tag
            )
    state = {k: v.float().contiguous() for k, v in state.items()}
    bad = [k for k, v in state.items() if not bool(torch.isfinite(v).all())]
    if bad:
        more = f" and {len(bad) - 1} more tensors" if len(bad) > 1 else ""
        raise CheckpointError(
            f"checkpoint {checkpoint.path} has non-finite weights (inf or nan) in {bad[0]}{more}; "
            "it is not exported or loaded (resume from an earlier checkpoint)"
        )
    return state


def load_checkpoint_model(checkpoint: Checkpoint):
    """A `VisionTransformer` with the checkpoint's consolidated weights (fp32, CPU)."""
    from vit_core import VisionTransformer, ViTConfig

    vit_config = checkpoint.meta.get("vit_config")
    if not vit_config:
        raise CheckpointError(f"checkpoint {checkpoint.path} has no model config in its marker")
    model = VisionTransformer(ViTConfig.from_dict(vit_config))
    model.load_state_dict(consolidated_state_dict(checkpoint), strict=True)
    return model.eval()


def export_checkpoint(
    source: str | Path, out: str | Path, fmt: str = "safetensors"
) -> dict[str, Any]:
    """Write the export of a checkpoint (or a run dir's newest; local or a storage URI) to OUT
    (a path or URI); an existing non-empty OUT is refused rather than overwritten."""
    if fmt not in FORMATS:
        raise CheckpointError(f"--format {fmt!r} is not supported; allowed: {', '.join(FORMATS)}")
    checkpoint = open_checkpoint(source)
    if checkpoint.meta.get("vit_config"):  # refuse before gathering the shards
        check_format(vit_core.ViTConfig.from_dict(checkpoint.meta["vit_config"]), fmt)
    with tempfile.TemporaryDirectory(prefix="vitpipe-export-") as tmp:
        model = load_checkpoint_model(local_copy(checkpoint, Path(tmp), names=None))
    info = export_info(
        model,
        fmt=fmt,
        classes=checkpoint.meta.get("classes"),
        source=checkpoint.uri,
        step=checkpoint.step,
        stage=checkpoint.meta.get("stage"),
        preprocess=checkpoint.meta.get("preprocess"),
    )
    save_model(model, out, fmt=fmt, info=info)
    return info


def check_format(config, fmt: str) -> None:
    """Refuse, in one line, a format that cannot hold the model."""
    if fmt == "hf" and config.backbone is not None:
        raise CheckpointError(
            "--format hf: Hugging Face transformers has no hybrid (CNN backbone) ViT; export "
            "this model with --format safetensors or timm"
        )


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
    info = {
        "format": EXPORT_FORMAT,
        "weights_format": fmt,
        "model": vit_core.describe_model(model.config),
        "vit_config": model.config.to_dict(),
        "classes": classes,
        "source_checkpoint": source,
        "step": step,
        "stage": stage,
        "preprocess": preprocess,
    }
    if fmt == "timm":  # what to build in timm for the state dict next to it
        distilled = model.config.distilled
        info["timm_class"] = "VisionTransformerDistilled" if distilled else "VisionTransformer"
        info["timm_model"] = vit_core.preset_name(model.config)
    return info


def save_model(model, out: str | Path, *, fmt: str = "safetensors", info: dict[str, Any]) -> None:
    """Write `model` as an export into `out` (a path, or a storage URI: written locally, then
    uploaded); an existing non-empty `out` is refused."""
    from safetensors.torch import save_file

    target = locate(str(out))
    if target.list_dir():
        raise CheckpointError(
            f"{target.uri} exists and is not empty; choose a new output directory"
        )
    check_format(model.config, fmt)
    if not target.is_local:
        with tempfile.TemporaryDirectory(prefix="vitpipe-export-") as staging:
            save_model(model, Path(staging) / "export", fmt=fmt, info=info)
            upload_dir(Path(staging) / "export", target)
        return
    out = target.local_path()
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if fmt == "hf":
        from vit_core.convert import hf_architecture, hf_config_dict, to_hf

        base_model = model.config.head == "mlp"
        state = to_hf(model, base_model=base_model)
        model_type, architecture = hf_architecture(model.config, base_model=base_model)
        hf_config = {
            "model_type": model_type,
            "architectures": [architecture],
            **hf_config_dict(model.config),
        }
        hf_config["id2label"] = {str(i): n for i, n in enumerate(info.get("classes") or [])} or None
        if hf_config["id2label"] is None:
            hf_config.pop("id2label")
        (tmp / EXPORT_CONFIG).write_text(json.dumps(hf_config, indent=1))
        (tmp / "vitpipe.json").write_text(json.dumps(info, indent=1))
    else:
        if fmt == "timm":
            from vit_core.convert import to_timm

            state = to_timm(model, head=model.config.head != "mlp")
        else:
            state = model.state_dict()
    save_file(
        {k: v.detach().float().contiguous() for k, v in state.items()},
        str(tmp / EXPORT_WEIGHTS),
    )
    if fmt != "hf":  # the weights' digest: what a copy of the export is verified against
        info = {**info, "weights": file_digest(tmp / EXPORT_WEIGHTS).to_json()}
        (tmp / EXPORT_CONFIG).write_text(json.dumps(info, indent=1))
    if out.exists():
        out.rmdir()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(out)


def recorded_weights(config_file: Path) -> dict[str, FileDigest]:
    """{weights file name: its size and sha256} as an export's config.json records them; {} for
    an older export, a Hugging Face dir or a file that is not JSON."""
    try:
        info = json.loads(config_file.read_text())
        if info.get("format") == EXPORT_FORMAT and isinstance(info.get("weights"), dict):
            return {EXPORT_WEIGHTS: FileDigest.from_json(info["weights"])}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    return {}


def load_exported(path: Path):
    """(model, info) from a `safetensors` export dir: a `VisionTransformer` in eval mode."""
    from safetensors.torch import load_file

    from vit_core import VisionTransformer, ViTConfig

    path = Path(path)
    config_path = path / EXPORT_CONFIG
    if not config_path.is_file() or not (path / EXPORT_WEIGHTS).is_file():
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
    model.load_state_dict(load_file(str(path / EXPORT_WEIGHTS)), strict=True)
    return model.eval(), info


def export_random_init(checkpoint: str | Path, out: str | Path, *, seed: int) -> str:
    """An export of a freshly initialised model with the architecture and preprocessing of
    `checkpoint`: the from-scratch baseline a fine-tune from `checkpoint` is compared with.
    Reused when it is already there. Both may be storage URIs; returns `out` as a URI."""
    from vit_core import VisionTransformer, ViTConfig

    target = locate(str(out))
    if target.join(EXPORT_WEIGHTS).is_file():
        return target.uri
    meta = open_checkpoint(checkpoint).meta
    torch.manual_seed(seed)
    model = VisionTransformer(ViTConfig.from_dict(meta["vit_config"]))
    info = export_info(model, stage="random-init", preprocess=meta.get("preprocess"))
    save_model(model, target.uri, info=info)
    return target.uri
