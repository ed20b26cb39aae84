"""Contract tests over every named preset: sizes, parameter counts against timm, and a forward,
backward and head swap of each (kept tiny with depth=1 and a 2x2 patch grid)."""

from __future__ import annotations

import pytest
import torch

from vit_core import (
    SIZES,
    VisionTransformer,
    ViTConfig,
    create_model,
    list_models,
    model_config,
    num_params,
    timm_kwargs,
)


def expected_params(c: ViTConfig) -> int:
    """ViT parameter count from the architecture, written out independently of the model."""
    d, h = c.dim, c.mlp_hidden_dim
    embed = c.in_chans * c.patch_size**2 * d + d + d + (1 + c.num_patches) * d
    block = 4 * d + (3 * d * d + (3 * d if c.qkv_bias else 0)) + (d * d + d) + 2 * d * h + h + d
    if c.head == "mlp":
        hid = c.head_hidden_dim or d
        head = d * hid + hid + hid * c.num_classes + c.num_classes
    else:
        head = d * c.num_classes + c.num_classes
    return embed + c.depth * block + 2 * d + head


def test_twenty_presets_from_one_table() -> None:
    names = list_models()
    assert len(names) == 20 == len(set(names))
    assert names[0] == "vit_tiny_patch8" and names[-1] == "vit_huge_patch32"
    assert SIZES["B"] == (768, 12, 12)
    cfg = model_config("vit_large_patch14")
    assert (cfg.dim, cfg.depth, cfg.num_heads, cfg.patch_size, cfg.img_size) == (
        1024,
        24,
        16,
        14,
        224,
    )
    assert cfg.mlp_ratio == 4.0 and cfg.grid_size == 16


def test_vit_b16_has_timm_param_count() -> None:
    with torch.device("meta"):
        model = create_model("vit_base_patch16")
    assert num_params(model) == 86_567_656


@pytest.mark.parametrize("name", list_models())
def test_preset_param_count_and_names_match_timm(name: str) -> None:
    timm_vit = pytest.importorskip("timm.models.vision_transformer")
    cfg = model_config(name)
    with torch.device("meta"):  # full-size models cost no memory or init time here
        ours = VisionTransformer(cfg)
        theirs = timm_vit.VisionTransformer(**timm_kwargs(cfg))
    assert num_params(ours) == num_params(theirs) == expected_params(cfg)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in theirs.state_dict().items()
    }


@pytest.mark.parametrize("name", list_models())
def test_preset_forward_backward_and_head_swap(name: str) -> None:
    patch = model_config(name).patch_size
    model = create_model(name, depth=1, img_size=2 * patch, num_classes=7, head="mlp")
    assert num_params(model) == expected_params(model.config)
    x = torch.randn(2, 3, 2 * patch, 2 * patch)
    logits = model(x)
    assert logits.shape == (2, 7)
    logits.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    model.swap_head(3)
    with torch.no_grad():
        assert torch.equal(model(x), torch.zeros(2, 3))


def test_overrides_and_image_size_suffix() -> None:
    cfg = model_config("vit_small_patch16", num_classes=10, head="mlp", drop_path_rate=0.1)
    assert (cfg.dim, cfg.num_classes, cfg.head, cfg.drop_path_rate) == (384, 10, "mlp", 0.1)
    assert model_config("vit_base_patch16_384").img_size == 384
    assert model_config("vit_tiny_patch16", dim=96, num_heads=2).dim == 96


@pytest.mark.parametrize(
    ("name", "overrides", "message"),
    [
        ("vit_bsae_patch16", {}, "did you mean 'vit_base_patch16'"),
        ("vit_base_patch15", {}, "allowed names are"),
        ("resnet50", {}, "unknown model 'resnet50'"),
        ("vit_base_patch16", {"num_class": 10}, "did you mean 'num_classes'"),
        ("vit_base_patch16", {"img_size": 100}, r"ViTConfig\.img_size=100"),
    ],
)
def test_bad_names_and_overrides(name: str, overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        create_model(name, **overrides)
