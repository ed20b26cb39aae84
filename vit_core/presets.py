"""Named ViT variants from ONE size table (Dosovitskiy et al. 2021, Table 1; Ti and S from DeiT /
big_vision), crossed with the patch sizes 8, 14, 16 and 32.

Every preset defaults to img_size 224, which all four patch sizes divide (224 = 14 * 16).
Names may carry timm's image-size suffix: `vit_base_patch16_384` means img_size=384.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import fields
from typing import Any

from .config import ViTConfig
from .model import VisionTransformer

# letter: (dim, depth, num_heads); MLP ratio 4 for all
SIZES: dict[str, tuple[int, int, int]] = {
    "Ti": (192, 12, 3),
    "S": (384, 12, 6),
    "B": (768, 12, 12),
    "L": (1024, 24, 16),
    "H": (1280, 32, 16),
}
SIZE_NAMES: dict[str, str] = {"tiny": "Ti", "small": "S", "base": "B", "large": "L", "huge": "H"}
PATCH_SIZES: tuple[int, ...] = (8, 14, 16, 32)

_NAME = re.compile(r"vit_([a-z]+)_patch(\d+)(?:_(\d+))?")


def list_models() -> list[str]:
    """Every preset name, smallest first."""
    return [f"vit_{size}_patch{p}" for size in SIZE_NAMES for p in PATCH_SIZES]


def model_config(name: str, **overrides: Any) -> ViTConfig:
    """The ViTConfig of a preset, with any ViTConfig field overridden."""
    match = _NAME.fullmatch(name)
    if not match or match[1] not in SIZE_NAMES or int(match[2]) not in PATCH_SIZES:
        close = difflib.get_close_matches(name, list_models(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(
            f"unknown model {name!r}{hint}; allowed names are {list_models()} "
            "(optionally with an image-size suffix, e.g. 'vit_base_patch16_384')"
        )
    allowed = [f.name for f in fields(ViTConfig)]
    for key in overrides:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(
                f"unknown override {key!r} for {name!r}{hint}; allowed overrides are {allowed}"
            )
    dim, depth, num_heads = SIZES[SIZE_NAMES[match[1]]]
    base: dict[str, Any] = {
        "patch_size": int(match[2]),
        "img_size": int(match[3]) if match[3] else 224,
        "dim": dim,
        "depth": depth,
        "num_heads": num_heads,
        "mlp_ratio": 4.0,
    }
    return ViTConfig(**{**base, **overrides})


def create_model(name: str, **overrides: Any) -> VisionTransformer:
    """Build a preset, e.g. `create_model("vit_small_patch16", num_classes=10, head="mlp")`."""
    return VisionTransformer(model_config(name, **overrides))
