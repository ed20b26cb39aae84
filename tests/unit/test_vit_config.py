"""ViTConfig validation and serialisation, FLOP counts, and vit_core's torch-only imports."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import vit_core
from vit_core import VisionTransformer, ViTConfig, flops


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"img_size": 225}, "img_size"),
        ({"img_size": 0}, "img_size"),
        ({"patch_size": 0}, "patch_size"),
        ({"dim": 100, "num_heads": 12}, "dim"),
        ({"depth": 0}, "depth"),
        ({"num_classes": 0}, "num_classes"),
        ({"in_chans": 0}, "in_chans"),
        ({"pool": "avg"}, "pool"),
        ({"head": "conv"}, "head"),
        ({"head_hidden_dim": 0, "head": "mlp"}, "head_hidden_dim"),
        ({"head_hidden_dim": 512}, "head_hidden_dim"),  # only with head="mlp"
        ({"drop_rate": 1.0}, "drop_rate"),
        ({"attn_drop_rate": -0.1}, "attn_drop_rate"),
        ({"drop_path_rate": 1.5}, "drop_path_rate"),
        ({"mlp_ratio": 0.0}, "mlp_ratio"),
        ({"ln_eps": 0.0}, "ln_eps"),
        ({"img_size": "224"}, "img_size"),  # YAML strings are not silently accepted
        ({"qkv_bias": "yes"}, "qkv_bias"),
        ({"depth": True}, "depth"),
        ({"head_bias_init": float("nan")}, "head_bias_init"),
    ],
)
def test_bad_values_raise_naming_the_field(changes: dict, field: str) -> None:
    with pytest.raises(ValueError, match=rf"ViTConfig\.{field}="):
        ViTConfig(**changes)


def test_error_says_what_is_allowed() -> None:
    with pytest.raises(ValueError, match=r"\['cls', 'mean'\]"):
        ViTConfig(pool="token")
    with pytest.raises(ValueError, match="multiple of patch_size=16"):
        ViTConfig(img_size=230)


def test_frozen_keyword_only_with_derived_sizes() -> None:
    cfg = ViTConfig(img_size=32, patch_size=8, mlp_ratio=2)
    assert isinstance(cfg.mlp_ratio, float)
    assert (cfg.grid_size, cfg.num_patches, cfg.mlp_hidden_dim) == (4, 16, 1536)
    with pytest.raises(AttributeError):
        cfg.dim = 10  # type: ignore[misc]
    with pytest.raises(TypeError):
        ViTConfig(224)  # type: ignore[misc]


def test_dict_round_trip_and_unknown_keys() -> None:
    cfg = ViTConfig(dim=64, num_heads=4, head="mlp", head_hidden_dim=32, pool="mean")
    d = cfg.to_dict()
    assert list(d) == [
        "img_size", "patch_size", "in_chans", "num_classes", "dim", "depth", "num_heads",
        "mlp_ratio", "qkv_bias", "ln_eps", "pool", "head", "head_hidden_dim", "drop_rate",
        "attn_drop_rate", "drop_path_rate", "head_bias_init",
    ]  # fmt: skip
    assert ViTConfig.from_dict(d) == cfg
    with pytest.raises(ValueError, match="unknown field 'num_head'.*did you mean 'num_heads'"):
        ViTConfig.from_dict({**d, "num_head": 4})
    assert cfg.replace(depth=3).depth == 3 and cfg.depth == 12
    with pytest.raises(ValueError, match="unknown field 'dpeth'"):
        cfg.replace(dpeth=3)
    with pytest.raises(ValueError, match="ViTConfig.img_size"):
        cfg.replace(img_size=33)


def test_flops_vit_b16_is_35_gflops() -> None:
    assert flops(ViTConfig()) == pytest.approx(35.2e9, rel=0.01)


def test_flops_scale_with_image_size() -> None:
    base = flops(ViTConfig())
    # 4x the tokens: linear parts x4, attention scores x16
    assert 4.0 < flops(ViTConfig(img_size=448)) / base < 4.6
    assert flops(ViTConfig(img_size=112)) < base / 3.5


@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_flops_equal_torch_flop_counter(head: str) -> None:
    cfg = ViTConfig(
        img_size=32, patch_size=8, dim=64, depth=2, num_heads=4, num_classes=10, head=head
    )
    model = VisionTransformer(cfg).eval()
    counter = FlopCounterMode(display=False)
    # the math backend runs attention as matmuls the counter sees (it skips the fused CPU kernel)
    with counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        model.forward_head(model.forward_features(torch.randn(1, 3, 32, 32)))
    assert counter.get_total_flops() == flops(cfg)


def test_vit_core_imports_torch_only() -> None:
    banned = ["ray", "deepspeed", "mlflow", "webdataset", "pyarrow", "timm", "transformers"]
    banned += ["safetensors", "pipelines", "launch"]
    code = (
        "import sys, vit_core\n"
        f"loaded = [m for m in {banned!r} if m in sys.modules]\n"
        "print(','.join(loaded))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"vit_core imported {out.stdout.strip()}"


PUBLIC_API = {
    "BackboneConfig",
    "HybridEmbed",
    "SIZES",
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
}


def test_public_api() -> None:
    """Exactly the documented names are public (nothing leaks, nothing is missing), and every
    class and function among them says what it is for."""
    assert set(vit_core.__all__) == PUBLIC_API
    exported = {
        name
        for name in dir(vit_core)
        if not name.startswith("_") and not inspect.ismodule(getattr(vit_core, name))
    }
    assert exported == PUBLIC_API, exported ^ PUBLIC_API
    for name in PUBLIC_API:
        value = getattr(vit_core, name)
        if callable(value):
            assert (value.__doc__ or "").strip(), f"vit_core.{name} has no docstring"
    model = vit_core.create_model("vit_tiny_patch16", num_classes=3, img_size=32, patch_size=8)
    assert isinstance(model, vit_core.VisionTransformer)
    assert vit_core.num_params(model) > 0 and vit_core.flops(model.config) > 0
