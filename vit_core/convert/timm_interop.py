"""Interop with timm's `VisionTransformer` (plain and hybrid) and `VisionTransformerDistilled`.

timm names are ours (see model.py and backbone.py), so conversion is a check that the timm
model is an architecture vit_core implements, the `ViTConfig` read off it, and
`load_state_dict`. Nothing here imports timm: the converters read a built model's attributes.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

from ..backbone import GN_EPS, WS_EPS
from ..config import BackboneConfig, ViTConfig
from ..model import VisionTransformer

_TIMM_POOL = {"token": "cls", "avg": "mean"}
_TIMM_CLASSES = ("VisionTransformer", "VisionTransformerDistilled")


def _require(ok: bool, what: str) -> None:
    if not ok:
        raise ValueError(
            f"unsupported source model: {what}; vit_core implements the plain, hybrid (ResNet-V2) "
            "and distilled (DeiT) ViT"
        )


def _eps_of(norms: list[nn.Module]) -> float:
    for norm in norms:
        _require(
            isinstance(norm, nn.LayerNorm) and norm.weight is not None and norm.bias is not None,
            f"a {type(norm).__name__} where an affine LayerNorm is expected",
        )
    eps = {float(n.eps) for n in norms}
    _require(len(eps) == 1, f"LayerNorms with different eps {sorted(eps)}")
    return eps.pop()


def _check_std_conv(conv: nn.Module, kernel: int, stride: int, where: str) -> None:
    _require(
        type(conv).__name__ == "StdConv2dSame" and conv.bias is None,
        f"{where}: {type(conv).__name__} where a StdConv2dSame without bias is expected",
    )
    _require(float(conv.eps) == WS_EPS, f"{where}: weight-standardisation eps {conv.eps}")
    _require(
        conv.kernel_size == (kernel, kernel) and conv.stride == (stride, stride),
        f"{where}: a {conv.kernel_size} conv with stride {conv.stride}",
    )
    _require(conv.dilation == (1, 1) and conv.groups == 1, f"{where}: dilated or grouped conv")


def _norm_groups(norm: nn.Module, act: bool, where: str) -> int:
    _require(type(norm).__name__ == "GroupNormAct", f"{where}: {type(norm).__name__}")
    _require(float(norm.eps) == GN_EPS and norm.affine, f"{where}: GroupNorm eps {norm.eps}")
    want = nn.ReLU if act else nn.Identity
    _require(type(norm.act) is want, f"{where}: activation {type(norm.act).__name__}")
    _require(isinstance(norm.drop, nn.Identity), f"{where}: dropout in a norm")
    return int(norm.num_groups)


def _backbone_from_timm(backbone: nn.Module) -> BackboneConfig:
    """BackboneConfig of timm's hybrid backbone: a ResNetV2 (preact=False, stem 'same') or the
    stem alone."""
    if type(backbone).__name__ == "ResNetV2":
        stem, stages = backbone.stem, list(backbone.stages)
        _require(isinstance(backbone.norm, nn.Identity), "a pre-activation ResNetV2 (preact=True)")
        _require(not list(backbone.head.parameters()), "a ResNetV2 backbone with a classifier")
    else:
        stem, stages = backbone, []
    _require(
        isinstance(stem, nn.Sequential) and list(stem._modules) == ["conv", "norm", "pool"],
        f"backbone {type(backbone).__name__} (timm's ResNetV2 with stem_type='same' only)",
    )
    _check_std_conv(stem.conv, 7, 2, "stem.conv")
    groups = {_norm_groups(stem.norm, True, "stem.norm")}
    pool = stem.pool
    _require(
        type(pool).__name__ == "MaxPool2dSame" and pool.kernel_size == (3, 3),
        f"stem pool {type(pool).__name__}",
    )
    layers, widths, prev = [], [], stem.conv.out_channels
    for i, stage in enumerate(stages):
        blocks = list(stage.blocks)
        width = blocks[0].conv3.out_channels
        for j, b in enumerate(blocks):
            where, stride = f"stages.{i}.blocks.{j}", 2 if i > 0 and j == 0 else 1
            _require(type(b).__name__ == "Bottleneck", f"{where}: {type(b).__name__}")
            _require(isinstance(b.drop_path, nn.Identity), f"{where}: drop path in the backbone")
            mid = b.conv1.out_channels
            _require(mid * 4 == width, f"{where}: bottleneck width {mid} for {width} channels")
            for name, kernel, s in (("conv1", 1, 1), ("conv2", 3, stride), ("conv3", 1, 1)):
                _check_std_conv(getattr(b, name), kernel, s, f"{where}.{name}")
            for name, act in (("norm1", True), ("norm2", True), ("norm3", False)):
                groups.add(_norm_groups(getattr(b, name), act, f"{where}.{name}"))
            if j == 0:
                d = b.downsample
                _require(type(d).__name__ == "DownsampleConv", f"{where}: shortcut {d}")
                _check_std_conv(d.conv, 1, stride, f"{where}.downsample.conv")
                groups.add(_norm_groups(d.norm, False, f"{where}.downsample.norm"))
                _require(b.conv1.in_channels == prev, f"{where}: input channels")
            else:
                _require(b.downsample is None, f"{where}: a shortcut projection")
        layers.append(len(blocks))
        widths.append(width)
        prev = width
    _require(len(groups) == 1, f"GroupNorms with different group counts {sorted(groups)}")
    default = BackboneConfig(layers=tuple(layers))
    return BackboneConfig(
        layers=tuple(layers),
        widths=None if tuple(widths) == default.stage_widths else tuple(widths),
        stem_width=stem.conv.out_channels,
        num_groups=groups.pop(),
    )


def _embed_from_timm(m: nn.Module) -> tuple[int, int, int, BackboneConfig | None]:
    """(img_size, patch_size, in_chans, backbone) of a timm PatchEmbed or HybridEmbed."""
    pe = m.patch_embed
    _require(type(pe).__name__ in ("PatchEmbed", "HybridEmbed"), f"embedding {type(pe).__name__}")
    _require(isinstance(getattr(pe, "norm", nn.Identity()), nn.Identity), "a patch-embed norm")
    _require(pe.proj.bias is not None, "a patch embedding without bias")
    _require(pe.img_size is not None and pe.img_size[0] == pe.img_size[1], "non-square images")
    _require(pe.patch_size[0] == pe.patch_size[1], "non-square patches")
    _require(not getattr(pe, "dynamic_img_pad", False), "dynamic_img_pad=True")
    img_size, patch_size = int(pe.img_size[0]), int(pe.patch_size[0])
    if type(pe).__name__ == "PatchEmbed":
        return img_size, patch_size, pe.proj.in_channels, None
    _require(pe.flatten and not isinstance(pe.proj, nn.Identity), "a hybrid without projection")
    backbone = _backbone_from_timm(pe.backbone)
    _require(
        tuple(pe.feature_ratio) == (backbone.stride,) * 2,
        f"a feature map at stride {pe.feature_ratio}",
    )
    first_conv = next(c for c in pe.backbone.modules() if isinstance(c, nn.Conv2d))
    return img_size, patch_size, first_conv.in_channels, backbone


def config_from_timm(timm_model: nn.Module) -> ViTConfig:
    """ViTConfig of a timm `VisionTransformer` (plain or hybrid) or `VisionTransformerDistilled`;
    ValueError for features we do not implement."""
    m = timm_model
    kind = type(m).__name__
    _require(kind in _TIMM_CLASSES, f"{kind} is not timm's ViT")
    distilled = kind == "VisionTransformerDistilled"
    _require(getattr(m, "cls_token", None) is not None, "no class token (class_token=False)")
    _require(getattr(m, "reg_token", None) is None, "register tokens (reg_tokens > 0)")
    _require(not getattr(m, "no_embed_class", False), "no_embed_class=True")
    _require(getattr(m, "pos_embed", None) is not None, "no learned position embedding")
    _require(getattr(m, "attn_pool", None) is None, "attention pooling (global_pool='map')")
    _require(m.global_pool in _TIMM_POOL, f"global_pool={m.global_pool!r} (token or avg only)")
    _require(not getattr(m, "pool_include_prefix", False), "pool_include_prefix=True")
    _require(isinstance(m.norm_pre, nn.Identity), "a pre-norm (pre_norm=True)")
    _require(isinstance(m.patch_drop, nn.Identity), "patch dropout")
    _require(not getattr(m, "dynamic_img_size", False), "dynamic_img_size=True")
    img_size, patch_size, in_chans, backbone = _embed_from_timm(m)
    pool = _TIMM_POOL[m.global_pool]
    final = m.norm if pool == "cls" else m.fc_norm
    other = m.fc_norm if pool == "cls" else m.norm
    _require(
        isinstance(other, nn.Identity),
        f"fc_norm placement that differs from timm's default for global_pool={m.global_pool!r}",
    )
    heads = [m.head, m.head_dist] if distilled else [m.head]
    _require(
        all(isinstance(h, nn.Linear) for h in heads),
        "no classifier (num_classes=0); call reset_classifier(n) first",
    )

    dim = m.cls_token.shape[-1]
    blocks = list(m.blocks)
    norms = [final]
    for b in blocks:
        _check_block(b, dim)
        norms += [b.norm1, b.norm2]
    hidden = blocks[0].mlp.fc1.out_features
    mlp_ratio = hidden / dim
    _require(int(dim * mlp_ratio) == hidden, f"MLP width {hidden} not expressible as dim * ratio")
    last_dp = blocks[-1].drop_path1
    return ViTConfig(
        img_size=img_size,
        patch_size=patch_size,
        in_chans=in_chans,
        num_classes=m.head.out_features,
        dim=dim,
        depth=len(blocks),
        num_heads=blocks[0].attn.num_heads,
        mlp_ratio=mlp_ratio,
        qkv_bias=blocks[0].attn.qkv.bias is not None,
        ln_eps=_eps_of(norms),
        pool=pool,
        head="linear",
        drop_rate=float(m.pos_drop.p),
        attn_drop_rate=float(blocks[0].attn.attn_drop.p),
        drop_path_rate=float(getattr(last_dp, "drop_prob", 0.0)),
        distilled=distilled,
        backbone=backbone,
    )


def _check_block(b: nn.Module, dim: int) -> None:
    _require(type(b).__name__ == "Block", f"block type {type(b).__name__}")
    _require(
        isinstance(b.ls1, nn.Identity) and isinstance(b.ls2, nn.Identity),
        "layer scale (init_values)",
    )
    a, mlp = b.attn, b.mlp
    _require(type(a).__name__ == "Attention", f"attention type {type(a).__name__}")
    _require(isinstance(a.q_norm, nn.Identity) and isinstance(a.k_norm, nn.Identity), "qk_norm")
    _require(
        isinstance(a.norm, nn.Identity) and getattr(a, "gate", None) is None,
        "scaled/gated attention",
    )
    _require(
        a.proj.bias is not None and a.qkv.out_features == 3 * dim,
        "a non-standard attention projection",
    )
    _require(
        type(mlp).__name__ == "Mlp" and isinstance(mlp.norm, nn.Identity),
        f"MLP type {type(mlp).__name__}",
    )
    _require(
        type(mlp.act) is nn.GELU and mlp.act.approximate == "none", f"MLP activation {mlp.act}"
    )
    _require(mlp.fc1.bias is not None and mlp.fc2.bias is not None, "MLP without biases")


def match_source(model: VisionTransformer, source: nn.Module) -> VisionTransformer:
    p = next(source.parameters())
    return model.to(device=p.device, dtype=p.dtype)


def from_timm(timm_model: nn.Module) -> VisionTransformer:
    """Our model with the weights of a timm ViT (same logits; a distilled model's in eval mode,
    where timm averages its two heads as we do)."""
    model = VisionTransformer(config_from_timm(timm_model))
    model.load_state_dict(timm_model.state_dict(), strict=True)
    return match_source(model, timm_model)


def timm_kwargs(config: ViTConfig) -> dict[str, Any]:
    """Keyword arguments that build the matching timm model (head 'linear'; an mlp head's hidden
    layer has no timm counterpart): `timm.models.vision_transformer.VisionTransformer(**kw)`,
    or `timm.models.deit.VisionTransformerDistilled(**kw)` for a distilled config. A hybrid also
    needs `embed_layer=functools.partial(timm.layers.HybridEmbed, backbone=...)` with timm's
    ResNetV2 of `config.backbone`; `timm.create_model(preset_name(config)[, img_size=...])`
    builds a hybrid preset whole."""
    return {
        "img_size": config.img_size,
        "patch_size": config.patch_size,
        "in_chans": config.in_chans,
        "num_classes": config.num_classes,
        "global_pool": {"cls": "token", "mean": "avg"}[config.pool],
        "embed_dim": config.dim,
        "depth": config.depth,
        "num_heads": config.num_heads,
        "mlp_ratio": config.mlp_ratio,
        "qkv_bias": config.qkv_bias,
        "pos_drop_rate": config.drop_rate,
        "proj_drop_rate": config.drop_rate,
        "attn_drop_rate": config.attn_drop_rate,
        "drop_path_rate": config.drop_path_rate,
        "norm_layer": functools.partial(nn.LayerNorm, eps=config.ln_eps),
    }


def to_timm(model: VisionTransformer, head: bool = True) -> dict[str, torch.Tensor]:
    """State dict for the timm model of `timm_kwargs(model.config)` (strict load).

    With `head=False` the classifier is left out, for a timm model built with num_classes=0.
    timm has no mlp-head hidden layer, so an mlp-head model needs `head=False` or `swap_head`.
    """
    if head and model.config.head == "mlp":
        raise ValueError(
            "to_timm: timm's ViT has no mlp-head hidden layer (pre_logits); "
            "pass head=False for the backbone, or call model.swap_head(num_classes) first"
        )
    skip = ("head.", "head_dist.", "pre_logits.")
    return {k: v for k, v in model.state_dict().items() if head or not k.startswith(skip)}
