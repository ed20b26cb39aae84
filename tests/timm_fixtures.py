"""timm's counterpart of a ViTConfig, for interop tests (needs timm): plain, hybrid (timm's
ResNetV2 built as its hybrid ViTs build it) or distilled."""

from __future__ import annotations

import functools

from torch import nn

from vit_core import ViTConfig, timm_kwargs


def timm_model(cfg: ViTConfig) -> nn.Module:
    from timm.layers import GroupNormAct, HybridEmbed, StdConv2dSame
    from timm.models.deit import VisionTransformerDistilled
    from timm.models.resnetv2 import ResNetV2, create_resnetv2_stem
    from timm.models.vision_transformer import VisionTransformer

    kwargs = timm_kwargs(cfg)
    if cfg.backbone is not None:
        b = cfg.backbone
        layers = {
            "conv_layer": functools.partial(StdConv2dSame, eps=1e-8),
            "norm_layer": functools.partial(GroupNormAct, num_groups=b.num_groups),
        }
        if b.layers:
            backbone = ResNetV2(
                layers=b.layers,
                channels=b.stage_widths,
                stem_chs=b.stem_width,
                num_classes=0,
                global_pool="",
                in_chans=cfg.in_chans,
                preact=False,
                stem_type="same",
                **layers,
            )
        else:
            backbone = create_resnetv2_stem(
                cfg.in_chans, b.stem_width, stem_type="same", preact=False, **layers
            )
        kwargs["embed_layer"] = functools.partial(HybridEmbed, backbone=backbone)
    cls = VisionTransformerDistilled if cfg.distilled else VisionTransformer
    return cls(**kwargs)
