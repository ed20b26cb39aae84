"""vit_core: a paper-faithful Vision Transformer in pure torch, with timm's API and timm / Hugging
Face weight interop, in three families: the plain ViT, the hybrid ViT (tokens from a ResNet-V2
feature map) and DeiT's distilled ViT. Imports torch only (safetensors lazily, in `load_hf_dir`).

    import vit_core
    model = vit_core.create_model("vit_base_patch16", num_classes=10, head="mlp")
    model.swap_head(100)                   # zero-initialised linear head for fine-tuning
    model.resize_pos_embed(384)            # run at a new resolution
    vit_core.create_model("vit_base_r50_s16_384")             # hybrid, timm's name
    vit_core.create_model("deit_small_distilled_patch16_224")  # distillation token + head
"""

from .backbone import HybridEmbed, build_backbone
from .config import BackboneConfig, ViTConfig
from .convert import (
    config_from_hf,
    config_from_timm,
    from_hf,
    from_timm,
    hf_architecture,
    hf_config_dict,
    load_hf_dir,
    timm_kwargs,
    to_hf,
    to_timm,
)
from .flops import flops
from .model import VisionTransformer, num_params
from .pos_embed import resample_pos_embed
from .presets import (
    SIZES,
    create_model,
    describe_model,
    list_models,
    model_config,
    preset_name,
)

__all__ = [
    "SIZES",
    "BackboneConfig",
    "HybridEmbed",
    "ViTConfig",
    "VisionTransformer",
    "build_backbone",
    "config_from_hf",
    "config_from_timm",
    "create_model",
    "describe_model",
    "flops",
    "from_hf",
    "from_timm",
    "hf_architecture",
    "hf_config_dict",
    "list_models",
    "load_hf_dir",
    "model_config",
    "num_params",
    "preset_name",
    "resample_pos_embed",
    "timm_kwargs",
    "to_hf",
    "to_timm",
]
