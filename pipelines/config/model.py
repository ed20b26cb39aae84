"""`model:` — which network to build: a vit_core preset name plus overrides of its fields.

vit_core owns the model: its presets, defaults and ranges. A key left out (null) takes the
preset's value, and the section is validated by building the `vit_core.ViTConfig`, whose errors
come back naming `model.<field>`. The pipeline adds its own defaults only where a stage needs
them: the paper's MLP head for pretraining (`head: null` -> mlp; a distilled model's two heads
are linear), the class count of the manifest (`num_classes: null`), a sigmoid loss's head-bias
init, and `grad_checkpointing`, which changes how the model runs, not what it is.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

import vit_core
from pipelines.section import MAX_IMG_SIZE, Section

# Beyond these a value is a typo, not a model anyone trains (ViT-22B: dim 6144, depth 48); vit_core
# owns what a valid model is, these only stop a typo from allocating terabytes.
SIGMOID_HEAD_BIAS = -10.0  # big_vision's init for sigmoid losses: start at p ~ 4.5e-5 per class
PLACEHOLDER_CLASSES = 1000  # validation only, when the class count comes from the manifest
# What may change on resume: an init choice and regularisation rates (same parameters, same
# forward at eval).
NOT_ARCHITECTURE = ("head_bias_init", "drop_rate", "attn_drop_rate", "drop_path_rate")


class BackboneSection(Section):
    """Overrides of a hybrid's ResNet-V2 (vit_core.BackboneConfig); null: the preset's."""

    layers: list[int] | None = Field(None, description="blocks per stage; [] = the stem only")
    widths: list[int] | None = Field(None, description="output channels per stage")
    stem_width: int | None = None
    num_groups: int | None = Field(None, description="GroupNorm groups")


class ModelSection(Section):
    """`vit_core.ViTConfig`'s fields (all but `head_bias_init`), each null for the preset's, plus
    `name` and `grad_checkpointing`; tests/unit/test_model_section.py keeps the lists equal."""

    name: str = "vit_base_patch16"
    img_size: int | None = Field(
        None, le=MAX_IMG_SIZE, description="None: the preset's (224, or the name's suffix)"
    )
    patch_size: int | None = Field(None, le=512, description="None: the preset's patch size")
    in_chans: int | None = Field(None, le=64)
    num_classes: int | None = Field(
        None, le=1_000_000, description="None: class count of the manifest"
    )
    dim: int | None = Field(None, le=32768)
    depth: int | None = Field(None, le=1024)
    num_heads: int | None = Field(None, le=1024)
    mlp_ratio: float | None = Field(None, le=64)
    qkv_bias: bool | None = None
    ln_eps: float | None = None
    pool: str | None = Field(None, description="cls | mean")
    head: str | None = Field(
        None,
        description="mlp | linear; None: mlp (the paper's pretraining head), or linear for "
        "a distilled model (DeiT's two heads)",
    )
    head_hidden_dim: int | None = Field(None, le=131072)
    drop_rate: float | None = None
    attn_drop_rate: float | None = None
    drop_path_rate: float | None = None
    distilled: bool | None = Field(None, description="None: as the name says (deit_*_distilled)")
    backbone: BackboneSection | None = Field(None, description="a hybrid's CNN; None: preset's")
    grad_checkpointing: bool = Field(False, description="recompute activations (not the model)")

    @model_validator(mode="after")
    def _build_the_model_config(self) -> ModelSection:
        classes = self.num_classes if self.num_classes is not None else PLACEHOLDER_CLASSES
        self.vit_config(classes, loss="softmax_ce")
        return self

    def vit_config(self, num_classes: int, *, loss: str = "softmax_ce") -> vit_core.ViTConfig:
        """The architecture this section describes; `num_classes` is used when the section's
        is null (the manifest's count), `loss` sets the head-bias init (sigmoid: -10)."""
        overrides: dict[str, Any] = {
            name: value
            for name, value in self
            if value is not None and name not in ("name", "grad_checkpointing", "backbone")
        }
        if self.backbone is not None:
            overrides["backbone"] = self.backbone.model_dump(exclude_none=True)
        if self.num_classes is None:
            overrides["num_classes"] = num_classes
        if loss == "sigmoid_bce":
            overrides["head_bias_init"] = SIGMOID_HEAD_BIAS
        try:
            if self.head is None:
                distilled = self.distilled
                if distilled is None:
                    distilled = vit_core.model_config(self.name).distilled
                overrides["head"] = "linear" if distilled else "mlp"
            return vit_core.model_config(self.name, **overrides)
        except ValueError as err:
            raise ValueError(self._in_section_terms(str(err))) from None

    def _in_section_terms(self, message: str) -> str:
        """vit_core's message, naming the config keys (`model.<field>`)."""
        if message.startswith("unknown model"):
            return f"model.name={self.name!r}: " + message.replace(f" {self.name!r}", "", 1)
        return message.replace("BackboneConfig.", "model.backbone.").replace("ViTConfig.", "model.")


def architecture_changes(saved: dict[str, Any], current: vit_core.ViTConfig) -> list[str]:
    """`model.<field>: saved -> current` for every field of the network that differs between a
    checkpoint's `vit_config` and the one a config builds now (empty: the same model)."""
    before = vit_core.ViTConfig.from_dict(saved).to_dict()
    after = current.to_dict()
    return [
        f"model.{key}: {before.get(key)!r} -> {after.get(key)!r}"
        for key in sorted(set(before) | set(after))
        if key not in NOT_ARCHITECTURE and before.get(key) != after.get(key)
    ]
