"""The model a stage starts from: a fresh preset for pretraining; for fine-tuning, a loaded
backbone with its MLP head swapped for a zero-initialised linear head (and, when the image size
changes, its position embeddings resampled).

`architecture` says what `build_model` builds without building it (the driver checks a resume
point against it): the preset, or the source's stored config through the same changes as
config transforms (`_swapped_head`, `_resized`); a test pins the two together."""

from __future__ import annotations

from torch import nn

import vit_core
from pipelines.checkpoint.model_sources import load_source_model, source_architecture
from pipelines.config import FinetuneSection, StageConfig
from pipelines.data.loader.train_sources import open_train_sources
from pipelines.train.request import TrainRequest
from vit_core import ViTConfig


def num_classes(config: StageConfig) -> int:
    """The classes the head predicts: `model.num_classes`, else the training set's (a mix's
    with `data.mix_classes`)."""
    return config.model.num_classes or open_train_sources(config.data).num_classes


def architecture(request: TrainRequest, num_classes: int) -> ViTConfig:
    """What `build_model(request, num_classes).config` is, read without loading any weights."""
    config = request.config
    if request.init_from is None:
        return config.model.vit_config(num_classes, loss=config.train.loss)
    source = _swapped_head(source_architecture(request.init_from), num_classes)
    img_size = _new_img_size(config.finetune, source)
    return _resized(source, img_size) if img_size is not None else source


def build_model(request: TrainRequest, num_classes: int) -> nn.Module:
    config = request.config
    if request.init_from is None:
        return vit_core.VisionTransformer(architecture(request, num_classes))
    model = load_source_model(request.init_from).model
    model.swap_head(num_classes)
    finetune = config.finetune
    img_size = _new_img_size(finetune, model.config)
    if img_size is not None:
        model.resize_pos_embed(img_size, mode=finetune.interpolation)
    if finetune and finetune.mode == "linear_probe":
        for name, param in model.named_parameters():
            param.requires_grad = name.startswith("head.")
    return model.train()


def _new_img_size(finetune: FinetuneSection | None, source: ViTConfig) -> int | None:
    """`finetune.img_size` where it differs from the source model's; None: kept."""
    if finetune and finetune.img_size and finetune.img_size != source.img_size:
        return finetune.img_size
    return None


def _swapped_head(config: ViTConfig, num_classes: int) -> ViTConfig:
    """What `VisionTransformer.swap_head(num_classes)` makes of `config`."""
    return config.replace(head="linear", num_classes=num_classes, head_hidden_dim=None)


def _resized(config: ViTConfig, img_size: int) -> ViTConfig:
    """What `VisionTransformer.resize_pos_embed(img_size)` makes of `config`."""
    return config.replace(img_size=img_size)
