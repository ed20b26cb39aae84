"""Named models from ONE size table (Dosovitskiy et al. 2021, Table 1; Ti and S from DeiT /
big_vision), in three families with timm's names:

- plain ViT: `vit_{tiny,small,base,large,huge}_patch{8,14,16,32}`;
- hybrid ViT (paper section 3.1): `vit_{size}_{backbone}` with the backbones of `HYBRIDS`, e.g.
  `vit_base_r50_s16` (timm: tiny_r_s16_p8, small_r26_s32, base_r26_s32, base_r50_s16,
  large_r50_s32);
- DeiT (Touvron et al. 2021): `deit_{tiny,small,base}_patch16` (a plain ViT) and
  `deit_{size}_distilled_patch16` (with the distillation token and its head).

Every preset defaults to img_size 224; names may carry timm's image-size suffix:
`vit_base_patch16_384` and `deit_base_distilled_patch16_384` mean img_size=384.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from .config import BackboneConfig, ViTConfig, _check_known, _close_match
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
# hybrid backbone name: (ResNet-V2 stages, patch size on its feature map); "s16"/"s32" in the
# name is the total stride of the original models, "p8" the patch size on the stem's output
HYBRIDS: dict[str, tuple[BackboneConfig, int]] = {
    "r_s16_p8": (BackboneConfig(layers=()), 8),
    "r26_s32": (BackboneConfig(layers=(2, 2, 2, 2)), 1),
    "r50_s16": (BackboneConfig(layers=(3, 4, 9)), 1),
    "r50_s32": (BackboneConfig(layers=(3, 4, 6, 3)), 1),
}
TIMM_HYBRIDS = ("tiny_r_s16_p8", "small_r26_s32", "base_r26_s32", "base_r50_s16", "large_r50_s32")
DEIT_SIZES = ("tiny", "small", "base")
FAMILIES = ("vit", "hybrid", "deit", "all")
DEFAULT_IMG_SIZE = 224

_NAME = re.compile(
    r"(?P<family>vit|deit)_(?P<size>[a-z]+)(?P<distilled>_distilled)?"
    rf"_(?:patch(?P<patch>\d+)|(?P<hybrid>{'|'.join(HYBRIDS)}))(?:_(?P<img>\d+))?"
)
# fields that do not change the network's shape (left out of preset names, as timm does)
_NOT_IN_NAME = (
    "img_size",
    "num_classes",
    "pool",
    "head",
    "head_hidden_dim",
    "drop_rate",
    "attn_drop_rate",
    "drop_path_rate",
    "head_bias_init",
)
_ALLOWED = (
    "vit_{tiny,small,base,large,huge}_patch{8,14,16,32}, "
    f"vit_{{size}}_{{{','.join(HYBRIDS)}}}, deit_{{tiny,small,base}}[_distilled]_patch16"
)


def list_models(family: str = "vit") -> list[str]:
    """Preset names, smallest first: 'vit' (the 20 plain ViTs, default), 'hybrid' and 'deit'
    (timm's registered names, with their image-size suffix), or 'all'."""
    if family not in FAMILIES:
        raise ValueError(f"family={family!r}: allowed values are {list(FAMILIES)}")
    plain = [f"vit_{size}_patch{p}" for size in SIZE_NAMES for p in PATCH_SIZES]
    hybrid = [f"vit_{name}_{px}" for name in TIMM_HYBRIDS for px in (224, 384)]
    deit = [f"deit_{s}{d}_patch16_224" for d in ("", "_distilled") for s in DEIT_SIZES]
    deit += ["deit_base_patch16_384", "deit_base_distilled_patch16_384"]
    by_family = {"vit": plain, "hybrid": hybrid, "deit": deit}
    return plain + hybrid + deit if family == "all" else by_family[family]


def _parse(name: str) -> dict[str, Any] | None:
    """The ViTConfig fields a name sets, or None when it names no preset."""
    m = _NAME.fullmatch(name)
    if m is None or m["size"] not in SIZE_NAMES:
        return None
    deit, patch, hybrid = m["family"] == "deit", m["patch"], m["hybrid"]
    if deit and (m["size"] not in DEIT_SIZES or hybrid) or (m["distilled"] and not deit):
        return None
    if patch is not None and int(patch) not in PATCH_SIZES or hybrid and hybrid not in HYBRIDS:
        return None
    dim, depth, num_heads = SIZES[SIZE_NAMES[m["size"]]]
    fields: dict[str, Any] = {"dim": dim, "depth": depth, "num_heads": num_heads, "mlp_ratio": 4.0}
    fields["img_size"] = int(m["img"]) if m["img"] else DEFAULT_IMG_SIZE
    if hybrid:
        fields["backbone"], fields["patch_size"] = HYBRIDS[hybrid]
    else:
        fields["patch_size"] = int(patch)
    if m["distilled"]:
        fields["distilled"] = True
    return fields


def model_config(name: str, **overrides: Any) -> ViTConfig:
    """The ViTConfig of a preset, with any ViTConfig field overridden. A `backbone` override
    may be a dict of BackboneConfig fields, merged into the preset's backbone (or into
    BackboneConfig's defaults, which turns a plain preset into a hybrid)."""
    base = _parse(name)
    if base is None:
        names = list_models("all")
        close = _close_match(name, names + [re.sub(r"_\d+$", "", n) for n in names])
        raise ValueError(
            f"unknown model {name!r}{close}; allowed names are {_ALLOWED} "
            "(optionally with an image-size suffix, e.g. 'vit_base_patch16_384')"
        )
    allowed = [f.name for f in dataclasses.fields(ViTConfig)]
    for key in overrides:
        if key not in allowed:
            raise ValueError(
                f"unknown override {key!r} for {name!r}{_close_match(key, allowed)}; "
                f"allowed overrides are {allowed}"
            )
    backbone = overrides.get("backbone")
    if isinstance(backbone, dict):
        _check_known(BackboneConfig, backbone)
        start = base.get("backbone") or BackboneConfig()
        overrides = {**overrides, "backbone": dataclasses.replace(start, **backbone)}
    return ViTConfig(**{**base, **overrides})


def create_model(name: str, **overrides: Any) -> VisionTransformer:
    """Build a preset, e.g. `create_model("vit_small_patch16", num_classes=10, head="mlp")`."""
    return VisionTransformer(model_config(name, **overrides))


def preset_name(config: ViTConfig) -> str | None:
    """The timm-style name (with image-size suffix) of the preset whose network `config` is,
    e.g. 'vit_base_r50_s16_384'; None for a custom architecture. Heads, pooling, class count
    and regularisation do not enter the name (timm's names leave them out too)."""
    by_shape = {shape: size for size, shape in SIZES.items()}
    letter = by_shape.get((config.dim, config.depth, config.num_heads))
    size = next((name for name, v in SIZE_NAMES.items() if v == letter), None)
    if size is None:
        return None
    if config.backbone is not None:
        candidates = [f"vit_{size}_{h}" for h in HYBRIDS]
    elif config.distilled:
        candidates = [f"deit_{size}_distilled_patch{config.patch_size}"]
    else:
        candidates = [f"vit_{size}_patch{config.patch_size}"]
    same = {k: getattr(config, k) for k in _NOT_IN_NAME}
    for name in candidates:
        try:
            if model_config(name, **same) == config:
                return f"{name}_{config.img_size}"
        except ValueError:  # e.g. an image size that this preset's stride does not divide
            continue
    return None


def describe_model(config: ViTConfig) -> str:
    """One line naming the network actually built, for run params and tags: the preset name when
    it is one (e.g. 'vit_small_patch16_224 (mlp head, 1000 classes)'), else its shape, e.g.
    'custom ViT (dim 64, depth 2, heads 2, mlp 4.0, patch 4, 32 px; mlp head, 10 classes)'."""
    c = config
    extras = [f"{c.head} head", f"{c.num_classes} classes"]
    if c.pool != "cls":
        extras.insert(0, f"{c.pool} pool")
    name = preset_name(c)
    if name is not None:
        return f"{name} ({', '.join(extras)})"
    family = "distilled DeiT" if c.distilled else "hybrid ViT" if c.backbone else "ViT"
    shape = [f"dim {c.dim}", f"depth {c.depth}", f"heads {c.num_heads}", f"mlp {c.mlp_ratio:g}"]
    if c.backbone is not None:
        b = c.backbone
        cnn = f"ResNet-V2 stem {b.stem_width}"
        if b.layers:
            cnn += f" stages {list(b.layers)} widths {list(b.stage_widths)}"
        shape.insert(0, f"{cnn} groups {b.num_groups}")
    shape += [f"patch {c.patch_size}", f"{c.img_size} px"]
    if c.in_chans != 3:
        shape.append(f"{c.in_chans} channels")
    return f"custom {family} ({', '.join(shape)}; {', '.join(extras)})"
