"""The model a stage starts from: a fresh preset for pretraining; for fine-tuning, a loaded
backbone with its MLP head swapped for a zero-initialised linear head (and, when the image size
changes, its position embeddings resampled)."""

from __future__ import annotations

from torch import nn

import vit_core
from pipelines.checkpoint.model_sources import load_source_model
from pipelines.train.request import TrainRequest
from vit_core import ViTConfig


def architecture(request: TrainRequest, num_classes: int) -> ViTConfig:
    """What `build_model` builds, without initialising weights where it can (pretraining)."""
    config = request.config
    if request.init_from is None:
        return config.model.vit_config(num_classes, loss=config.train.loss)
    return build_model(request, num_classes).config


def build_model(request: TrainRequest, num_classes: int) -> nn.Module:
    config = request.config
    if request.init_from is None:
        return vit_core.VisionTransformer(architecture(request, num_classes))
    model = load_source_model(request.init_from).model
    model.swap_head(num_classes)
    finetune = config.finetune
    if finetune and finetune.img_size and finetune.img_size != model.config.img_size:
        model.resize_pos_embed(finetune.img_size, mode=finetune.interpolation)
    if finetune and finetune.mode == "linear_probe":
        for name, param in model.named_parameters():
            param.requires_grad = name.startswith("head.")
    return model.train()
