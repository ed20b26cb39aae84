"""Interop with timm (`timm_interop`) and Hugging Face transformers (`hf_interop`, and
`hf_dir` for save_pretrained directories). Nothing here imports timm or transformers."""

from .hf_dir import hf_dir_architecture, load_hf_dir
from .hf_interop import config_from_hf, from_hf, hf_architecture, hf_config_dict, to_hf
from .timm_interop import config_from_timm, from_timm, timm_kwargs, to_timm

__all__ = [
    "config_from_hf",
    "config_from_timm",
    "from_hf",
    "from_timm",
    "hf_architecture",
    "hf_config_dict",
    "hf_dir_architecture",
    "load_hf_dir",
    "timm_kwargs",
    "to_hf",
    "to_timm",
]
