"""The model a stage starts from: a fresh preset for pretraining."""

from __future__ import annotations

from torch import nn

from pipelines.train.request import TrainRequest


def build_model(request: TrainRequest, num_classes: int) -> nn.Module:
    import vit_core

    section = request.config.model
    return vit_core.create_model(section.name, **section.vit_overrides(num_classes))
