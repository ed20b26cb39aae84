"""ViTConfig: the one typed, frozen description of a Vision Transformer, and BackboneConfig, the
CNN that feeds a hybrid ViT.

Every model, preset, converter and FLOP count is derived from these objects, so a run's model is
fully described by `config.to_dict()` (a JSON-able dict) and rebuilt by `ViTConfig.from_dict`.
Three families share the one config: the plain ViT, the hybrid ViT (`backbone` set: the tokens
are cut from a CNN feature map, ViT paper section 3.1) and DeiT's distilled ViT (`distilled`:
a distillation token and a second head, Touvron et al. 2021).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, fields
from typing import Any

POOLS = ("cls", "mean")
HEADS = ("mlp", "linear")
EXTENSION_FIELDS = ("distilled", "backbone")  # left out of to_dict() while unset (0.1 layout)


def _close_match(name: str, allowed: list[str]) -> str:
    match = difflib.get_close_matches(name, allowed, n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _check_known(cls: type, keys: Any) -> None:
    allowed = [f.name for f in fields(cls)]
    for key in keys:
        if key not in allowed:
            raise ValueError(
                f"{cls.__name__}: unknown field {key!r}{_close_match(str(key), allowed)}; "
                f"allowed fields are {allowed}"
            )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True, kw_only=True)
class BackboneConfig:
    """The ResNet-V2 of timm's hybrid ViTs (BiT's ResNet with `preact=False`): weight-
    standardised convs with TF "SAME" padding, GroupNorm + ReLU, a 7x7/2 conv and 3x3/2 max-pool
    stem (stride 4), then bottleneck stages, the first at stride 1 and each later one at stride 2.

    `layers=()` is the stem alone (timm's `vit_tiny_r_s16_p8`); (2, 2, 2, 2) is R26, (3, 4, 9)
    the 3-stage R50 of the ViT paper, (3, 4, 6, 3) the full R50.
    """

    layers: tuple[int, ...] = (3, 4, 9)  # bottleneck blocks per stage; () = the stem only
    widths: tuple[int, ...] | None = None  # output channels per stage; None: 256 * 2**stage
    stem_width: int = 64
    num_groups: int = 32  # GroupNorm groups everywhere

    def __post_init__(self) -> None:
        for name in ("layers", "widths"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, value := tuple(value))
            if value is None and name == "widths":
                continue
            if not isinstance(value, tuple) or not all(_is_int(v) and v >= 1 for v in value):
                raise ValueError(
                    f"BackboneConfig.{name}={value!r}: must be a list of integers >= 1"
                )
        for name in ("stem_width", "num_groups"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"BackboneConfig.{name}={value!r}: must be an integer >= 1")
        if self.widths is not None and len(self.widths) != len(self.layers):
            raise ValueError(
                f"BackboneConfig.widths={list(self.widths)}: needs one width per stage "
                f"(layers={list(self.layers)} has {len(self.layers)}), or null for 256 * 2**stage"
            )
        g = self.num_groups
        if self.stem_width % 8 or self.stem_width % g:
            raise ValueError(
                f"BackboneConfig.stem_width={self.stem_width}: must be a multiple of 8 and of "
                f"num_groups={g}"
            )
        for width in self.stage_widths:
            # bottleneck width = width / 4, a multiple of 8 (timm rounds it so) and of the groups
            if width % 32 or (width // 4) % g:
                raise ValueError(
                    f"BackboneConfig.widths={list(self.stage_widths)}: each must be a multiple "
                    f"of 32 whose quarter (the bottleneck width) num_groups={g} divides"
                )

    @property
    def stage_widths(self) -> tuple[int, ...]:
        """Output channels of each stage."""
        if self.widths is not None:
            return self.widths
        return tuple(256 * 2**i for i in range(len(self.layers)))

    @property
    def stride(self) -> int:
        """Input pixels per feature-map position: 4 for the stem, x2 per stage after the first."""
        return 4 * 2 ** max(len(self.layers) - 1, 0)

    @property
    def out_channels(self) -> int:
        return self.stage_widths[-1] if self.layers else self.stem_width

    def to_dict(self) -> dict[str, Any]:
        return {
            "layers": list(self.layers),
            "widths": None if self.widths is None else list(self.widths),
            "stem_width": self.stem_width,
            "num_groups": self.num_groups,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BackboneConfig:
        _check_known(cls, d)
        return cls(**d)


@dataclass(frozen=True, kw_only=True)
class ViTConfig:
    """Architecture of a ViT; defaults are ViT-B/16 at 224 px with a 1000-way linear head."""

    img_size: int = 224
    patch_size: int = 16  # on the image; for a hybrid, on the backbone's feature map
    in_chans: int = 3
    num_classes: int = 1000
    dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    ln_eps: float = 1e-6
    pool: str = (
        "cls"  # "cls": class token; "mean": mean of the patch tokens (timm global_pool="avg")
    )
    head: str = (
        "linear"  # "mlp": Linear -> tanh -> Linear (paper pretraining); "linear": fine-tuning
    )
    head_hidden_dim: int | None = None  # hidden width of the mlp head; None means dim
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    head_bias_init: float = 0.0  # big_vision uses -10 with a sigmoid loss
    distilled: bool = False  # DeiT: a distillation token and a second linear head
    backbone: BackboneConfig | None = None  # hybrid: tokens from this CNN's feature map

    def __post_init__(self) -> None:
        if isinstance(self.backbone, dict):
            object.__setattr__(self, "backbone", BackboneConfig.from_dict(self.backbone))
        self._check_types()
        positive = (
            "img_size",
            "patch_size",
            "in_chans",
            "num_classes",
            "dim",
            "depth",
            "num_heads",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"ViTConfig.{name}={getattr(self, name)!r}: must be >= 1")
        self._check_image_size()
        if self.dim % self.num_heads:
            raise ValueError(
                f"ViTConfig.dim={self.dim!r}: must be divisible by num_heads={self.num_heads}"
            )
        if not (math.isfinite(self.mlp_ratio) and int(self.dim * self.mlp_ratio) >= 1):
            raise ValueError(
                f"ViTConfig.mlp_ratio={self.mlp_ratio!r}: must be > 0 with int(dim * mlp_ratio) >= 1"
            )
        if not (math.isfinite(self.ln_eps) and self.ln_eps > 0):
            raise ValueError(f"ViTConfig.ln_eps={self.ln_eps!r}: must be a finite number > 0")
        if self.pool not in POOLS:
            raise ValueError(f"ViTConfig.pool={self.pool!r}: allowed values are {list(POOLS)}")
        if self.head not in HEADS:
            raise ValueError(f"ViTConfig.head={self.head!r}: allowed values are {list(HEADS)}")
        if self.head_hidden_dim is not None:
            if self.head_hidden_dim < 1:
                raise ValueError(
                    f"ViTConfig.head_hidden_dim={self.head_hidden_dim!r}: must be >= 1 or None"
                )
            if self.head != "mlp":
                raise ValueError(
                    f"ViTConfig.head_hidden_dim={self.head_hidden_dim!r}: only used with "
                    f"head='mlp' (head is {self.head!r}); set it to None"
                )
        for name in ("drop_rate", "attn_drop_rate", "drop_path_rate"):
            rate = getattr(self, name)
            if not 0.0 <= rate < 1.0:
                raise ValueError(f"ViTConfig.{name}={rate!r}: must be in [0, 1)")
        if not math.isfinite(self.head_bias_init):
            raise ValueError(f"ViTConfig.head_bias_init={self.head_bias_init!r}: must be finite")
        if self.distilled and self.pool != "cls":
            raise ValueError(
                f"ViTConfig.pool={self.pool!r}: a distilled model reads its class and "
                "distillation tokens; allowed values are ['cls']"
            )
        if self.distilled and self.head != "linear":
            raise ValueError(
                f"ViTConfig.head={self.head!r}: a distilled model has two linear heads (DeiT); "
                "allowed values are ['linear']"
            )

    def _check_image_size(self) -> None:
        step = self.patch_size * self.feature_stride
        if self.img_size % step == 0:
            return
        example = step * max(1, round(self.img_size / step))
        if self.backbone is None:
            what = f"patch_size={self.patch_size} (the patch size {step} px)"
        else:
            what = (
                f"{step} (the patch size {step} px: patch_size={self.patch_size} on a backbone "
                f"of stride {self.feature_stride})"
            )
        raise ValueError(
            f"ViTConfig.img_size={self.img_size!r}: must be a multiple of {what}, e.g. {example}"
        )

    def _check_types(self) -> None:
        """Reject wrong types (YAML strings, bools for ints); promote ints to float fields."""
        for f in fields(self):
            value = getattr(self, f.name)
            expected = f.type
            if expected == "float":
                if _is_int(value):
                    object.__setattr__(self, f.name, float(value))
                elif not isinstance(value, float):
                    raise ValueError(f"ViTConfig.{f.name}={value!r}: must be a number")
            elif expected in ("int", "int | None"):
                if value is None and expected == "int | None":
                    continue
                if not _is_int(value):
                    kind = "an integer or None" if expected == "int | None" else "an integer"
                    raise ValueError(f"ViTConfig.{f.name}={value!r}: must be {kind}")
            elif expected == "bool":
                if not isinstance(value, bool):
                    raise ValueError(f"ViTConfig.{f.name}={value!r}: must be true or false")
            elif expected == "str" and not isinstance(value, str):
                raise ValueError(f"ViTConfig.{f.name}={value!r}: must be a string")
            elif expected == "BackboneConfig | None" and not (
                value is None or isinstance(value, BackboneConfig)
            ):
                raise ValueError(
                    f"ViTConfig.{f.name}={value!r}: must be a BackboneConfig, a dict or None"
                )

    @property
    def feature_stride(self) -> int:
        """Image pixels per position of the map the patches are cut from (1: the image)."""
        return self.backbone.stride if self.backbone is not None else 1

    @property
    def grid_size(self) -> int:
        """Patches per side."""
        return self.img_size // (self.patch_size * self.feature_stride)

    @property
    def num_patches(self) -> int:
        """Patch tokens per image (the class and distillation tokens not included)."""
        return self.grid_size**2

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patches: the class token, and the distillation token if any."""
        return 2 if self.distilled else 1

    @property
    def mlp_hidden_dim(self) -> int:
        """Hidden width of each block's MLP (timm's `int(dim * mlp_ratio)`)."""
        return int(self.dim * self.mlp_ratio)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every field, for YAML/JSON and checkpoints. `distilled` and `backbone`
        appear only when set, so a plain ViT's dict is the one vitpipe 0.1 wrote."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        if self.backbone is not None:
            d["backbone"] = self.backbone.to_dict()
        for name in EXTENSION_FIELDS:
            if not d[name]:
                del d[name]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ViTConfig:
        """Inverse of `to_dict`; unknown keys are an error (typos must not pass silently)."""
        _check_known(cls, d)
        return cls(**d)

    def replace(self, **changes: Any) -> ViTConfig:
        """A validated copy with some fields changed."""
        _check_known(type(self), changes)
        return dataclasses.replace(self, **changes)
