"""timm and Hugging Face interop: logits parity (fp32, eval, random weights, 1e-5) both ways,
config round trips, save_pretrained directories, and clear errors for unsupported sources."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from vit_core import (
    VisionTransformer,
    ViTConfig,
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

timm_vit = pytest.importorskip("timm.models.vision_transformer")
transformers = pytest.importorskip("transformers")

ATOL = 1e-5
TIMM_CASES = {  # name: ViTConfig changes from a dim-64 model
    "cls-32px-p4": {"img_size": 32, "patch_size": 4},
    "mean-48px-p8-eps1e-5-nobias": {
        "img_size": 48,
        "patch_size": 8,
        "pool": "mean",
        "ln_eps": 1e-5,
        "qkv_bias": False,
        "mlp_ratio": 2.0,
    },
}
HF_CASES = {
    "32px-p8-eps1e-12": {"img_size": 32, "patch_size": 8, "ln_eps": 1e-12},
    "48px-p4-nobias": {"img_size": 48, "patch_size": 4, "qkv_bias": False, "mlp_ratio": 2.0},
}


def small(**changes) -> ViTConfig:
    return ViTConfig(**{"dim": 64, "depth": 2, "num_heads": 4, "num_classes": 10, **changes})


def images(cfg: ViTConfig) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, cfg.in_chans, cfg.img_size, cfg.img_size, generator=g)


def randomize(model: nn.Module) -> nn.Module:
    """Random values everywhere (norm weights, biases, tokens too), so every tensor is checked."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn_like(p) * 0.2
            p.copy_(noise + 1.0 if p.ndim == 1 and name.endswith("weight") else noise)  # norms
    return model.eval()


def hf_config(cfg: ViTConfig):
    return transformers.ViTConfig(**hf_config_dict(cfg))


# --------------------------------------------------------------------------------------- timm


@pytest.mark.parametrize("changes", TIMM_CASES.values(), ids=TIMM_CASES.keys())
def test_from_timm_parity(changes: dict) -> None:
    cfg = small(**changes)
    theirs = randomize(timm_vit.VisionTransformer(**timm_kwargs(cfg)))
    assert config_from_timm(theirs) == cfg
    ours = from_timm(theirs).eval()
    x = images(cfg)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=ATOL)
        torch.testing.assert_close(
            ours.forward_head(ours.forward_features(x), pre_logits=True),
            theirs.forward_head(theirs.forward_features(x), pre_logits=True),
            rtol=0,
            atol=ATOL,
        )


@pytest.mark.parametrize("changes", TIMM_CASES.values(), ids=TIMM_CASES.keys())
def test_to_timm_parity(changes: dict) -> None:
    cfg = small(**changes)
    ours = randomize(VisionTransformer(cfg))
    theirs = timm_vit.VisionTransformer(**timm_kwargs(cfg)).eval()
    theirs.load_state_dict(to_timm(ours), strict=True)
    x = images(cfg)
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), ours(x), rtol=0, atol=ATOL)


def test_timm_registered_model_and_backbone_export() -> None:
    timm = pytest.importorskip("timm")
    theirs = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, depth=2, num_classes=3
    ).eval()
    ours = from_timm(theirs).eval()
    assert ours.config == ViTConfig(img_size=32, dim=192, depth=2, num_heads=3, num_classes=3)
    x = images(ours.config)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=ATOL)
    mlp_model = VisionTransformer(small(img_size=32, patch_size=8, head="mlp"))
    with pytest.raises(ValueError, match="pre_logits"):
        to_timm(mlp_model)
    backbone = timm_vit.VisionTransformer(**{**timm_kwargs(mlp_model.config), "num_classes": 0})
    backbone.load_state_dict(to_timm(mlp_model, head=False), strict=True)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"reg_tokens": 4}, "register tokens"),
        ({"init_values": 1e-5}, "layer scale"),
        ({"class_token": False, "global_pool": "avg"}, "no class token"),
        ({"no_embed_class": True}, "no_embed_class"),
        ({"qk_norm": True}, "qk_norm"),
        ({"global_pool": "avg", "fc_norm": False}, "fc_norm"),
        ({"num_classes": 0}, "no classifier"),
        ({"act_layer": "gelu_tanh"}, "MLP activation"),
    ],
)
def test_from_timm_rejects_unsupported_features(kwargs: dict, message: str) -> None:
    base = {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 1, "num_heads": 4}
    theirs = timm_vit.VisionTransformer(**{**base, **kwargs})
    with pytest.raises(ValueError, match=message):
        from_timm(theirs)


# ------------------------------------------------------------------------------- Hugging Face


@pytest.mark.parametrize("changes", HF_CASES.values(), ids=HF_CASES.keys())
def test_from_hf_classifier_parity(changes: dict) -> None:
    cfg = small(**changes)
    theirs = randomize(transformers.ViTForImageClassification(hf_config(cfg)))
    assert config_from_hf(theirs) == cfg
    ours = from_hf(theirs).eval()
    x = images(cfg)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(pixel_values=x).logits, rtol=0, atol=ATOL)


@pytest.mark.parametrize("changes", HF_CASES.values(), ids=HF_CASES.keys())
def test_from_hf_base_model_pooler_is_the_mlp_head(changes: dict) -> None:
    cfg = small(**changes)
    theirs = randomize(transformers.ViTModel(hf_config(cfg)))
    ours = from_hf(theirs).eval()
    assert ours.config.head == "mlp" and ours.config.num_classes == theirs.config.num_labels
    assert not ours.head.weight.any()  # a ViTModel has no classifier: zero head
    x = images(cfg)
    with torch.no_grad():
        out = theirs(pixel_values=x)
        feats = ours.forward_features(x)
        torch.testing.assert_close(feats, out.last_hidden_state, rtol=0, atol=ATOL)
        pooled = ours.forward_head(feats, pre_logits=True)
        torch.testing.assert_close(pooled, out.pooler_output, rtol=0, atol=ATOL)
    no_pooler = from_hf(transformers.ViTModel(hf_config(cfg), add_pooling_layer=False))
    assert no_pooler.config.head == "linear" and not no_pooler.head.weight.any()


@pytest.mark.parametrize("changes", HF_CASES.values(), ids=HF_CASES.keys())
def test_to_hf_parity(changes: dict) -> None:
    cfg = small(**changes)
    ours = randomize(VisionTransformer(cfg))
    theirs = transformers.ViTForImageClassification(hf_config(cfg)).eval()
    theirs.load_state_dict(to_hf(ours), strict=True)
    x = images(cfg)
    with torch.no_grad():
        torch.testing.assert_close(theirs(pixel_values=x).logits, ours(x), rtol=0, atol=ATOL)


def test_to_hf_base_model_exports_mlp_head_as_pooler() -> None:
    cfg = small(img_size=32, patch_size=8, head="mlp", head_hidden_dim=96)
    ours = randomize(VisionTransformer(cfg))
    with pytest.raises(ValueError, match="base_model=True"):
        to_hf(ours)
    theirs = transformers.ViTModel(hf_config(cfg), add_pooling_layer=True).eval()
    theirs.load_state_dict(to_hf(ours, base_model=True), strict=True)
    x = images(cfg)
    with torch.no_grad():
        expected = ours.forward_head(ours.forward_features(x), pre_logits=True)
        torch.testing.assert_close(
            theirs(pixel_values=x).pooler_output, expected, rtol=0, atol=ATOL
        )
    with pytest.raises(ValueError, match="class token"):
        to_hf(VisionTransformer(small(pool="mean")))


def test_load_hf_dir_reads_save_pretrained_without_transformers(tmp_path) -> None:
    cfg = small(img_size=32, patch_size=8, ln_eps=1e-12, num_classes=4)
    theirs = randomize(transformers.ViTForImageClassification(hf_config(cfg)))
    theirs.save_pretrained(tmp_path / "cls")
    base = randomize(transformers.ViTModel(hf_config(cfg)))
    base.save_pretrained(tmp_path / "base")
    x = images(cfg)
    ours = load_hf_dir(tmp_path / "cls").eval()
    assert ours.config == cfg
    pooled = load_hf_dir(tmp_path / "base").eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(pixel_values=x).logits, rtol=0, atol=ATOL)
        feats = pooled.forward_features(x)
        torch.testing.assert_close(
            pooled.forward_head(feats, pre_logits=True),
            base(pixel_values=x).pooler_output,
            rtol=0,
            atol=ATOL,
        )


def test_load_hf_dir_round_trip_of_our_export(tmp_path) -> None:
    """A dir written without transformers (new-style names, torch .bin) loads back exactly."""
    cfg = small(img_size=32, patch_size=8, qkv_bias=False)
    ours = randomize(VisionTransformer(cfg))
    (tmp_path / "config.json").write_text(json.dumps({**hf_config_dict(cfg), "model_type": "vit"}))
    torch.save(to_hf(ours), tmp_path / "pytorch_model.bin")
    loaded = load_hf_dir(tmp_path)
    assert loaded.config == cfg
    for (k, a), (_, b) in zip(ours.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


def test_hf_round_trip_of_config() -> None:
    cfg = small(img_size=48, patch_size=16, head="mlp", head_hidden_dim=32, ln_eps=1e-12)
    back = config_from_hf(transformers.ViTModel(hf_config(cfg)))
    assert back == cfg.replace(num_classes=back.num_classes)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"hidden_act": "gelu_new"}, "hidden_act='gelu_new'"),
        ({"pooler_act": "relu"}, "pooler_act='relu'"),
    ],
)
def test_from_hf_rejects_unsupported_features(changes: dict, message: str) -> None:
    cfg = small(img_size=32, patch_size=8)
    theirs = transformers.ViTModel(transformers.ViTConfig(**{**hf_config_dict(cfg), **changes}))
    with pytest.raises(ValueError, match=message):
        from_hf(theirs)


def test_load_hf_dir_errors(tmp_path) -> None:
    with pytest.raises(ValueError, match="no config.json"):
        load_hf_dir(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vit"}))
    with pytest.raises(ValueError, match="no model.safetensors"):
        load_hf_dir(tmp_path)
