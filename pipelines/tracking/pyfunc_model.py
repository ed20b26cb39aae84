"""The MLflow pyfunc form of a vitpipe export: `predict(images) -> class ids`.

Logged and registered by `pipelines.tracking.registry.log_and_register`, then, anywhere vitpipe is
installed:

    model = mlflow.pyfunc.load_model("models:/vit-digits/3")
    ids = model.predict(images)         # numpy uint8 (N, H, W, 3) RGB -> numpy int64 (N,)

Input: one numpy uint8 array (N, H, W, 3), RGB, any H and W (the same for the whole array; call
once per size). Nothing else is accepted (no float tensors, no DataFrames).

Preprocessing is the training loader's eval transform (`ShardLoader(train=False)`): the shorter
side resized to round(S / crop_pct) (bilinear, antialiased), a centre crop S x S, then
(x / 255 - mean) / std. S, mean, std and crop_pct come from the `preprocess` entry of the
export's config.json, `{"img_size": S, "mean": [...], "std": [...], "crop_pct": 0.875}`; an export
without it uses the model's img_size, mean = std = 0.5 and crop_pct 0.875 (the config defaults).

This module is what the logged model pickles by reference: it imports mlflow.pyfunc, numpy and
torch only; vit_core and safetensors are imported when the model is loaded, torchvision when it
first predicts.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import torch

from pipelines.layout import EXPORT_FORMAT

DEFAULT_CROP_PCT = 0.875
DEFAULT_MEAN_STD = 0.5
PREDICT_BATCH = 64  # images per forward: bounds memory for large inputs


def read_export_info(export_dir: str | Path) -> dict[str, Any]:
    """The export's config.json, checked: a vitpipe safetensors export with weights present."""
    root = Path(export_dir)
    config_path, weights_path = root / "config.json", root / "model.safetensors"
    if not config_path.is_file() or not weights_path.is_file():
        raise ValueError(
            f"{root} is not a vitpipe export: it needs config.json and model.safetensors "
            "(write one with `vitpipe export CHECKPOINT OUT`)"
        )
    info = json.loads(config_path.read_text())
    if info.get("format") != EXPORT_FORMAT or not isinstance(info.get("vit_config"), dict):
        raise ValueError(
            f"{config_path}: format is {info.get('format')!r}, expected {EXPORT_FORMAT!r} with a "
            "vit_config (an `hf` export keeps vitpipe's entry in vitpipe.json; export again "
            "with --format safetensors)"
        )
    weights_format = info.get("weights_format", "safetensors")
    if weights_format != "safetensors":
        raise ValueError(
            f"{config_path}: weights_format is {weights_format!r}; the MLflow model loads "
            "vitpipe's own names only: export again with --format safetensors"
        )
    return info


def preprocess_settings(info: dict[str, Any]) -> dict[str, Any]:
    """`{"img_size", "mean", "std", "crop_pct"}` from an export's info, defaults filled in."""
    given = info.get("preprocess") or {}
    vit = info.get("vit_config") or {}
    settings = {
        "img_size": int(given.get("img_size", vit.get("img_size", 224))),
        "mean": [float(v) for v in given.get("mean", [DEFAULT_MEAN_STD] * 3)],
        "std": [float(v) for v in given.get("std", [DEFAULT_MEAN_STD] * 3)],
        "crop_pct": float(given.get("crop_pct", DEFAULT_CROP_PCT)),
    }
    if settings["img_size"] < 1 or not 0 < settings["crop_pct"] <= 1:
        raise ValueError(f"preprocess settings out of range: {settings}")
    if len(settings["mean"]) != 3 or len(settings["std"]) != 3:
        raise ValueError(f"preprocess mean and std need 3 values (RGB): {settings}")
    if not all(s > 0 and math.isfinite(s) for s in settings["std"]):
        raise ValueError(f"preprocess std must be positive: {settings}")
    return settings


def preprocess(
    images: np.ndarray,
    *,
    img_size: int,
    mean: list[float],
    std: list[float],
    crop_pct: float,
) -> torch.Tensor:
    """uint8 (N, H, W, 3) RGB -> float32 (N, 3, S, S) normalised, as the eval loader does."""
    import torchvision.transforms.v2.functional as TF

    check_images(images)
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    x = TF.resize(x, [round(img_size / crop_pct)], antialias=True)
    x = TF.center_crop(x, [img_size, img_size])
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    # the loader's `Normalize`: one multiply-add with these exact constants
    return x.float().mul_(1.0 / (255.0 * std_t)).add_(-mean_t / std_t)


def check_images(images: Any) -> None:
    if not isinstance(images, np.ndarray):
        raise TypeError(f"expected a numpy uint8 array (N, H, W, 3), got {type(images).__name__}")
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(
            f"expected a numpy uint8 array (N, H, W, 3) of RGB images, got dtype {images.dtype} "
            f"and shape {images.shape}"
        )


class ViTClassifier(mlflow.pyfunc.PythonModel):
    """A vitpipe export as an MLflow model; artifacts: `{"export": <export dir>}`."""

    def load_context(self, context) -> None:
        from safetensors.torch import load_file

        from vit_core import VisionTransformer, ViTConfig

        root = Path(context.artifacts["export"])
        info = read_export_info(root)
        model = VisionTransformer(ViTConfig.from_dict(info["vit_config"]))
        model.load_state_dict(load_file(str(root / "model.safetensors")), strict=True)
        settings = preprocess_settings(info)
        if settings["img_size"] != model.config.img_size:
            raise ValueError(
                f"{root / 'config.json'}: preprocess.img_size={settings['img_size']} but the "
                f"model runs at img_size={model.config.img_size}"
            )
        self.model = model.eval()
        self.settings = settings
        self.classes = info.get("classes")

    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
        """uint8 (N, H, W, 3) RGB images -> int64 (N,) class ids (see the module docstring)."""
        check_images(model_input)
        ids = [np.zeros(0, dtype=np.int64)]
        with torch.inference_mode():
            for start in range(0, model_input.shape[0], PREDICT_BATCH):
                x = preprocess(model_input[start : start + PREDICT_BATCH], **self.settings)
                ids.append(self.model(x).argmax(dim=-1).numpy().astype(np.int64))
        return np.concatenate(ids)
