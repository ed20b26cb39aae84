"""The hybrid (ResNet-V2 + ViT) and DeiT families: presets with timm's names and parameter
counts, configs, heads (swap, distilled train/eval outputs), FLOPs, and a tiny hybrid that trains.
Full-size models are built on the meta device; everything that runs is tiny."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from vit_core import (
    BackboneConfig,
    VisionTransformer,
    ViTConfig,
    create_model,
    describe_model,
    flops,
    list_models,
    model_config,
    num_params,
    preset_name,
)

NEW_PRESETS = list_models("hybrid") + list_models("deit")
TINY_BACKBONE = BackboneConfig(layers=(1, 1), widths=(32, 64), stem_width=16, num_groups=8)


def tiny_hybrid(**changes) -> ViTConfig:
    base = {"img_size": 32, "patch_size": 1, "dim": 32, "depth": 2, "num_heads": 2}
    return ViTConfig(**{**base, "num_classes": 5, "backbone": TINY_BACKBONE, **changes})


def tiny_deit(**changes) -> ViTConfig:
    base = {"img_size": 32, "patch_size": 8, "dim": 32, "depth": 2, "num_heads": 2}
    return ViTConfig(**{**base, "num_classes": 5, "distilled": True, **changes})


def images(cfg: ViTConfig, batch: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, cfg.in_chans, cfg.img_size, cfg.img_size, generator=g)


def timm_name(name: str) -> tuple[str, dict]:
    """timm's registered name and kwargs for our preset (timm has no vit_base_r26_s32_384)."""
    if name == "vit_base_r26_s32_384":
        return "vit_base_r26_s32_224", {"img_size": 384}
    return name, {}


def test_families_list_timm_names() -> None:
    assert len(list_models()) == 20  # the plain ViTs stay the default listing
    assert "vit_base_r50_s16_384" in list_models("hybrid")
    assert "deit_base_distilled_patch16_384" in list_models("deit")
    assert list_models("all") == list_models() + NEW_PRESETS
    with pytest.raises(ValueError, match="family='cnn'"):
        list_models("cnn")


@pytest.mark.parametrize("name", NEW_PRESETS)
def test_new_preset_param_count_and_names_equal_timms(name: str) -> None:
    timm = pytest.importorskip("timm")
    registered, kwargs = timm_name(name)
    with torch.device("meta"):  # shapes only: up to 330M parameters cost nothing here
        ours = create_model(name)
        theirs = timm.create_model(registered, pretrained=False, num_classes=1000, **kwargs)
    assert num_params(ours) == num_params(theirs)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in theirs.state_dict().items()
    }
    plain_deit = name.startswith("deit_") and "distilled" not in name
    assert preset_name(ours.config) == (name.replace("deit_", "vit_") if plain_deit else name)
    assert flops(ours.config) > 0


def test_preset_fields() -> None:
    r50 = model_config("vit_base_r50_s16_384")
    assert (r50.img_size, r50.patch_size, r50.feature_stride, r50.grid_size) == (384, 1, 16, 24)
    assert r50.backbone == BackboneConfig(layers=(3, 4, 9))
    assert r50.backbone.stage_widths == (256, 512, 1024)
    stem = model_config("vit_tiny_r_s16_p8_224")
    assert (stem.backbone.layers, stem.patch_size, stem.feature_stride, stem.grid_size) == (
        (),
        8,
        4,
        7,
    )
    deit = model_config("deit_small_distilled_patch16_224")
    assert deit.distilled and deit.num_prefix_tokens == 2 and (deit.dim, deit.depth) == (384, 12)
    assert model_config("deit_base_patch16_384") == model_config("vit_base_patch16_384")
    tiny = model_config("vit_small_r26_s32", img_size=32, backbone={"layers": [1, 1], "widths": [32, 64], "stem_width": 16, "num_groups": 8})  # fmt: skip
    assert tiny.backbone == TINY_BACKBONE and tiny.grid_size == 4


@pytest.mark.parametrize(
    ("name", "overrides", "message"),
    [
        ("vit_base_r50_s61", {}, "did you mean 'vit_base_r50_s16'"),
        ("deit_large_patch16_224", {}, r"deit_\{tiny,small,base\}"),
        ("vit_small_distilled_patch16", {}, "unknown model"),
        ("vit_base_r50_s16", {"backbone": {"layer": [1]}}, "did you mean 'layers'"),
        ("vit_base_r50_s16", {"img_size": 200}, r"img_size=200: must be a multiple of 16"),
        ("deit_tiny_distilled_patch16", {"head": "mlp"}, "two linear heads"),
        ("deit_tiny_distilled_patch16", {"pool": "mean"}, r"ViTConfig\.pool='mean'"),
    ],
)
def test_bad_names_and_overrides(name: str, overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        model_config(name, **overrides)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"widths": (32,)}, "one width per stage"),
        ({"widths": (48, 64)}, "multiple of 32"),
        ({"num_groups": 16}, "num_groups=16"),
        ({"layers": (0, 1)}, r"BackboneConfig\.layers="),
        ({"stem_width": 12}, "stem_width=12"),
        ({"layers": "22"}, "list of integers"),
    ],
)
def test_backbone_config_errors_name_the_field(changes: dict, message: str) -> None:
    base = {"layers": (1, 1), "widths": (32, 64), "stem_width": 16, "num_groups": 8}
    with pytest.raises(ValueError, match=message):
        BackboneConfig(**{**base, **changes})


def test_dict_round_trip_keeps_the_0_1_layout_for_plain_models() -> None:
    for cfg in (tiny_hybrid(head="mlp"), tiny_deit(), model_config("vit_tiny_r_s16_p8_384")):
        d = cfg.to_dict()
        assert ViTConfig.from_dict(d) == cfg
        import json

        assert ViTConfig.from_dict(json.loads(json.dumps(d))) == cfg  # lists, not tuples
    assert "backbone" in tiny_hybrid().to_dict() and "distilled" in tiny_deit().to_dict()
    plain = ViTConfig(dim=64, num_heads=4).to_dict()
    assert "backbone" not in plain and "distilled" not in plain


def test_describe_model_names_what_is_built() -> None:
    cfg = model_config("vit_tiny_patch16", img_size=32, patch_size=4, dim=64, depth=2,
                       num_heads=2, head="mlp", num_classes=10)  # fmt: skip
    assert describe_model(cfg) == (
        "custom ViT (dim 64, depth 2, heads 2, mlp 4, patch 4, 32 px; mlp head, 10 classes)"
    )
    assert describe_model(model_config("vit_base_patch16_384", head="mlp")) == (
        "vit_base_patch16_384 (mlp head, 1000 classes)"
    )
    assert describe_model(model_config("deit_small_distilled_patch16_224", num_classes=10)) == (
        "deit_small_distilled_patch16_224 (linear head, 10 classes)"
    )
    assert describe_model(tiny_hybrid()).startswith(
        "custom hybrid ViT (ResNet-V2 stem 16 stages [1, 1] widths [32, 64] groups 8, dim 32"
    )


def test_hybrid_forward_shapes_backward_and_checkpointing() -> None:
    torch.manual_seed(0)
    model = VisionTransformer(tiny_hybrid(head="mlp", drop_path_rate=0.1))
    x = images(model.config)
    model.eval()
    feats = model.forward_features(x)
    assert feats.shape == (2, 1 + 16, 32)
    torch.testing.assert_close(model(x), model.forward_head(feats), rtol=1e-5, atol=1e-6)
    model.train()

    def grads(checkpointing: bool) -> list[torch.Tensor]:
        model.zero_grad()
        model.set_grad_checkpointing(checkpointing)
        torch.manual_seed(3)
        model(x).square().sum().backward()
        return [p.grad.clone() for p in model.parameters()]

    for a, b in zip(grads(False), grads(True), strict=True):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"\(48, 48\).*img_size=32"):
        model(torch.randn(1, 3, 48, 48))


def test_hybrid_init_follows_timm() -> None:
    torch.manual_seed(0)
    model = VisionTransformer(tiny_hybrid(dim=64))
    stem = model.patch_embed.backbone.stem
    fan_out = stem.conv.out_channels * 7 * 7
    assert stem.conv.weight.std().item() == pytest.approx((2 / fan_out) ** 0.5, rel=0.2)
    assert torch.equal(stem.norm.weight, torch.ones(16)) and not stem.norm.bias.any()


@pytest.mark.parametrize("make", [tiny_hybrid, tiny_deit], ids=["hybrid", "deit"])
def test_resize_pos_embed_keeps_prefix_tokens(make) -> None:
    model = VisionTransformer(make())
    prefix = model.num_prefix_tokens
    old = model.pos_embed.detach().clone()
    model.resize_pos_embed(64)
    assert model.pos_embed.shape[1] == prefix + model.config.num_patches
    assert torch.equal(model.pos_embed[:, :prefix], old[:, :prefix])
    assert model(images(model.config)).shape == (2, 5)


def test_distilled_heads_train_and_eval_like_timm() -> None:
    model = VisionTransformer(tiny_deit(drop_path_rate=0.0))
    assert model.no_weight_decay() == {"pos_embed", "cls_token", "dist_token"}
    assert model.get_classifier() == (model.head, model.head_dist)
    x = images(model.config)
    feats = model.forward_features(x)
    assert feats.shape == (2, 2 + 16, 32)
    cls, dist = model.head(feats[:, 0]), model.head_dist(feats[:, 1])
    model.train()
    torch.testing.assert_close(model(x), (cls + dist) / 2)  # timm: averaged unless enabled
    model.set_distilled_training(True)
    pair = model(x)
    assert isinstance(pair, tuple)
    torch.testing.assert_close(pair[0], cls)
    torch.testing.assert_close(pair[1], dist)
    model.eval()
    torch.testing.assert_close(model(x), (cls + dist) / 2)  # inference averages the heads
    pooled = model.forward_head(feats, pre_logits=True)
    torch.testing.assert_close(pooled, (feats[:, 0] + feats[:, 1]) / 2)
    with pytest.raises(ValueError, match="no distillation token"):
        VisionTransformer(tiny_hybrid()).set_distilled_training(True)


@pytest.mark.parametrize(
    "cfg",
    [
        ViTConfig(img_size=32, patch_size=8, dim=32, depth=2, num_heads=2, head="mlp"),
        tiny_hybrid(head="mlp"),
        tiny_deit(),
    ],
    ids=["plain", "hybrid", "deit"],
)
def test_swap_head_for_every_family(cfg: ViTConfig) -> None:
    model = VisionTransformer(cfg).eval()
    x = images(cfg)
    feats = model.forward_features(x)
    model.swap_head(9)
    assert model.config == cfg.replace(head="linear", num_classes=9, head_hidden_dim=None)
    heads = model.get_classifier()
    for head in heads if isinstance(heads, tuple) else (heads,):
        assert head.out_features == 9 and not head.weight.any() and not head.bias.any()
    assert torch.equal(model(x), torch.zeros(2, 9))
    assert torch.equal(model.forward_features(x), feats)  # the backbone is untouched
    model.train().set_grad_checkpointing(False)
    model(x).sum().backward()
    assert model.head.weight.grad is not None


@pytest.mark.parametrize(
    "cfg",
    [
        tiny_hybrid(head="mlp"),
        tiny_hybrid(
            backbone=BackboneConfig(layers=(), stem_width=16, num_groups=8),
            img_size=40,
            patch_size=2,
        ),  # fmt: skip
        tiny_deit(),
    ],
    ids=["hybrid", "stem-only", "deit"],
)
def test_flops_equal_torch_flop_counter(cfg: ViTConfig) -> None:
    model = VisionTransformer(cfg).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        model.forward_head(model.forward_features(images(cfg, batch=1)))
    assert counter.get_total_flops() == flops(cfg)


def test_backbone_flops_dominate_r50_hybrid() -> None:
    plain = flops(model_config("vit_base_patch16"))
    hybrid = flops(model_config("vit_base_r50_s16_224"))
    assert hybrid > plain  # same 196 tokens, plus a ResNet-50 trunk (about 8 GFLOPs at 224 px)
    assert 5e9 < hybrid - plain < 12e9


@pytest.mark.parametrize("make", [tiny_hybrid, tiny_deit], ids=["hybrid", "deit"])
def test_compile_fullgraph_train_step(make) -> None:
    """torch.compile is on by default on a GPU: no graph break in the backbone's SAME padding
    or in the distilled head's (class, distillation) output."""
    torch.manual_seed(0)
    model = VisionTransformer(make(drop_path_rate=0.1))
    if model.config.distilled:
        model.set_distilled_training(True)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out = compiled(images(model.config))
    loss = sum(o.sum() for o in out) if isinstance(out, tuple) else out.sum()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
