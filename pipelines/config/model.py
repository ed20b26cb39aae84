"""`model:` — which ViT to build. A preset name plus optional overrides of its fields."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, model_validator

from pipelines.config.base import Section

# Beyond these a value is a typo, not a model anyone trains (ViT-22B: dim 6144, depth 48).
MAX_IMG_SIZE = 4096

_PRESET_RE = re.compile(r"^vit_(tiny|small|base|large|huge)_patch(8|14|16|32)$")


class ModelSection(Section):
    name: str = "vit_base_patch16"
    img_size: int = Field(224, ge=8, le=MAX_IMG_SIZE)
    patch_size: int | None = Field(None, ge=1, le=512, description="None: the preset's patch size")
    in_chans: int = Field(3, ge=1, le=64)
    num_classes: int | None = Field(
        None, ge=1, le=1_000_000, description="None: class count of the manifest"
    )
    dim: int | None = Field(None, ge=8, le=32768)
    depth: int | None = Field(None, ge=1, le=1024)
    num_heads: int | None = Field(None, ge=1, le=1024)
    mlp_ratio: float = Field(4.0, gt=0, le=64)
    qkv_bias: bool = True
    ln_eps: float = Field(1e-6, gt=0)
    pool: Literal["cls", "mean"] = "cls"
    head: Literal["mlp", "linear"] = "mlp"
    head_hidden_dim: int | None = Field(None, ge=1, le=131072)
    drop_rate: float = Field(0.0, ge=0, lt=1)
    attn_drop_rate: float = Field(0.0, ge=0, lt=1)
    drop_path_rate: float = Field(0.0, ge=0, lt=1)
    grad_checkpointing: bool = False

    @model_validator(mode="after")
    def _check_shape(self) -> ModelSection:
        match = _PRESET_RE.match(self.name)
        if match is None:
            raise ValueError(
                f"model.name={self.name!r} is not a preset; allowed: "
                "vit_{tiny,small,base,large,huge}_patch{8,14,16,32}"
            )
        patch = self.patch_size or int(match.group(2))
        if self.img_size % patch:
            raise ValueError(
                f"model.img_size={self.img_size} is not a multiple of the patch size {patch}; "
                f"use a multiple such as {max(patch, round(self.img_size / patch) * patch)}"
            )
        if self.dim is not None and self.num_heads is not None and self.dim % self.num_heads:
            raise ValueError(
                f"model.dim={self.dim} is not divisible by model.num_heads={self.num_heads}"
            )
        return self

    def vit_overrides(self, num_classes: int) -> dict:
        """The keyword overrides `vit_core.create_model(self.name, ...)` takes."""
        fields = self.model_dump(exclude={"name", "num_classes", "grad_checkpointing"})
        overrides = {k: v for k, v in fields.items() if v is not None}
        overrides["num_classes"] = self.num_classes or num_classes
        return overrides
