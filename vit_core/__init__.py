"""vit_core: a paper-faithful Vision Transformer in pure torch, with timm's API and timm / Hugging
Face weight interop. Imports torch only (safetensors lazily, inside `load_hf_dir`).

    import vit_core
    model = vit_core.create_model("vit_base_patch16", num_classes=10, head="mlp")
    model.swap_head(100)                   # zero-initialised linear head for fine-tuning
    model.resize_pos_embed(384)            # run at a new resolution
"""

from .config import ViTConfig
from .convert import (
    config_from_hf,
    config_from_timm,
    from_hf,
    from_timm,
    hf_config_dict,
    load_hf_dir,
    timm_kwargs,
    to_hf,
    to_timm,
)
from .flops import flops
from .model import VisionTransformer, num_params
from .pos_embed import resample_pos_embed
from .presets import SIZES, create_model, list_models, model_config

__all__ = [
    "SIZES",
    "ViTConfig",
    "VisionTransformer",
    "config_from_hf",
    "config_from_timm",
    "create_model",
    "flops",
    "from_hf",
    "from_timm",
    "hf_config_dict",
    "list_models",
    "load_hf_dir",
    "model_config",
    "num_params",
    "resample_pos_embed",
    "timm_kwargs",
    "to_hf",
    "to_timm",
]
