"""timm and Hugging Face interop of the hybrid and DeiT families: logits parity (fp32, eval,
random weights, 1e-5) with timm's VisionTransformer (hybrid) and VisionTransformerDistilled both
ways, DeiT with teacher heads in transformers, and save_pretrained dirs whose weight files must
stay inside the directory."""

from __future__ import annotations

import functools
import json
import os

import pytest
import torch
from torch import nn

from vit_core import (
    BackboneConfig,
    VisionTransformer,
    ViTConfig,
    config_from_hf,
    config_from_timm,
    from_hf,
    from_timm,
    hf_config_dict,
    list_models,
    load_hf_dir,
    model_config,
    to_hf,
    to_timm,
)

from timm_fixtures import timm_model

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")

ATOL = 1e-5
TINY_BACKBONE = BackboneConfig(layers=(1, 2), widths=(32, 64), stem_width=16, num_groups=8)
# every new preset architecture, reduced to depth 1 (the image size is the smallest the
# backbone's stride allows, times 2); the _384 twins differ only in img_size
FAMILY_PRESETS = sorted({n.rsplit("_", 1)[0] for n in list_models("hybrid") + list_models("deit")})


def randomize(model: nn.Module) -> nn.Module:
    """Random values everywhere (norm weights, biases, tokens too), so every tensor is checked;
    weight matrices at std 1/sqrt(fan-in), so logits stay O(1) at ViT-L width and the 1e-5
    tolerance tests the conversion, not float32 rounding of large sums."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn_like(p)
            if p.ndim == 1:
                p.copy_(1.0 + 0.2 * noise if name.endswith("weight") else 0.2 * noise)  # norms
            elif name.endswith("weight"):
                p.copy_(noise / p[0].numel() ** 0.5)
            else:  # class / distillation token, position embedding
                p.copy_(0.2 * noise)
    return model.eval()


def images(cfg: ViTConfig) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, cfg.in_chans, cfg.img_size, cfg.img_size, generator=g)


def reduced(name: str) -> ViTConfig:
    cfg = model_config(name, depth=1, num_classes=7)
    return cfg.replace(img_size=2 * cfg.patch_size * cfg.feature_stride)


@pytest.mark.parametrize("name", FAMILY_PRESETS)
def test_from_timm_of_every_family_preset_gives_the_same_logits(name: str) -> None:
    """timm's own registered model (reduced depth), random weights -> ours: same logits."""
    registered = next(n for n in list_models("all") if n.startswith(name + "_"))
    cfg = reduced(name)
    theirs = timm.create_model(
        registered, pretrained=False, depth=1, num_classes=7, img_size=cfg.img_size
    )
    theirs = randomize(theirs)
    assert config_from_timm(theirs) == cfg
    ours = from_timm(theirs).eval()
    x = images(cfg)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=ATOL)
    before = {k: v.clone() for k, v in theirs.state_dict().items()}
    theirs.load_state_dict(to_timm(ours), strict=True)  # to_timm round-trips
    for key, value in theirs.state_dict().items():
        assert torch.equal(value, before[key]), key


@pytest.mark.parametrize(
    "cfg",
    [
        ViTConfig(
            img_size=32,
            patch_size=1,
            dim=32,
            depth=2,
            num_heads=2,
            num_classes=5,
            backbone=TINY_BACKBONE,
            ln_eps=1e-5,
            mlp_ratio=2.0,
        ),  # fmt: skip
        ViTConfig(
            img_size=48,
            patch_size=2,
            dim=32,
            depth=2,
            num_heads=4,
            num_classes=5,
            backbone=BackboneConfig(layers=(), stem_width=16, num_groups=4),
        ),  # fmt: skip
        ViTConfig(
            img_size=32,
            patch_size=8,
            dim=32,
            depth=2,
            num_heads=2,
            num_classes=5,
            distilled=True,
            qkv_bias=False,
        ),  # fmt: skip
    ],
    ids=["tiny-r2stage", "tiny-stem-p2", "tiny-distilled"],
)
def test_to_timm_and_back_for_tiny_variants(cfg: ViTConfig) -> None:
    ours = randomize(VisionTransformer(cfg))
    theirs = timm_model(cfg).eval()
    theirs.load_state_dict(to_timm(ours), strict=True)
    assert config_from_timm(theirs) == cfg
    x = images(cfg)
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), ours(x), rtol=0, atol=ATOL)
        again = from_timm(theirs).eval()
        assert torch.equal(again(x), ours(x))


def test_distilled_training_outputs_match_timm() -> None:
    cfg = reduced("deit_tiny_distilled_patch16")
    theirs = randomize(timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False,
                                         depth=1, num_classes=7, img_size=cfg.img_size))  # fmt: skip
    ours = from_timm(theirs)
    theirs.train().set_distilled_training(True)
    ours.train().set_distilled_training(True)
    x = images(cfg)
    torch.manual_seed(0)
    a = ours(x)
    torch.manual_seed(0)
    b = theirs(x)
    assert isinstance(a, tuple) and isinstance(b, tuple)
    for ours_logits, theirs_logits in zip(a, b, strict=True):
        torch.testing.assert_close(ours_logits, theirs_logits, rtol=0, atol=ATOL)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"global_pool": "avg"}, "distilled"),
        ({"class_token": True, "reg_tokens": 2}, "register tokens"),
    ],
)
def test_from_timm_rejects_unsupported_distilled_models(kwargs: dict, message: str) -> None:
    from timm.models.deit import VisionTransformerDistilled

    base = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}
    try:
        theirs = VisionTransformerDistilled(**{**base, **kwargs})
    except AssertionError:
        return  # timm itself refuses the combination
    with pytest.raises(ValueError, match=message):
        from_timm(theirs)


def test_from_timm_rejects_a_preactivation_backbone() -> None:
    from timm.layers import HybridEmbed
    from timm.models.resnetv2 import ResNetV2
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    backbone = ResNetV2(layers=(1,), channels=(256,), num_classes=0, global_pool="", preact=True)
    theirs = TimmViT(img_size=32, patch_size=1, embed_dim=32, depth=1, num_heads=2,
                     embed_layer=functools.partial(HybridEmbed, backbone=backbone))  # fmt: skip
    with pytest.raises(ValueError, match="unsupported source model"):
        from_timm(theirs)


# ------------------------------------------------------------------------------- Hugging Face


def deit_config(cfg: ViTConfig):
    return transformers.DeiTConfig(**hf_config_dict(cfg))


def small_deit(**changes) -> ViTConfig:
    base = {"img_size": 32, "patch_size": 8, "dim": 32, "depth": 2, "num_heads": 2}
    return ViTConfig(**{**base, "num_classes": 4, "distilled": True, "ln_eps": 1e-12, **changes})


def test_distilled_to_hf_is_deit_with_teacher_heads_and_back() -> None:
    cfg = small_deit()
    ours = randomize(VisionTransformer(cfg))
    theirs = transformers.DeiTForImageClassificationWithTeacher(deit_config(cfg)).eval()
    theirs.load_state_dict(to_hf(ours), strict=True)
    x = images(cfg)
    with torch.no_grad():
        out = theirs(pixel_values=x)
        torch.testing.assert_close(out.logits, ours(x), rtol=0, atol=ATOL)
        torch.testing.assert_close(out.cls_logits, ours.head(ours.forward_features(x)[:, 0]))
    assert config_from_hf(theirs) == cfg
    back = from_hf(theirs).eval()
    with torch.no_grad():
        assert torch.equal(back(x), ours(x))


def test_load_hf_dir_reads_a_deit_save_pretrained_dir(tmp_path) -> None:
    cfg = small_deit(qkv_bias=False)
    theirs = randomize(transformers.DeiTForImageClassificationWithTeacher(deit_config(cfg)))
    theirs.save_pretrained(tmp_path / "deit")
    ours = load_hf_dir(tmp_path / "deit").eval()
    assert ours.config == cfg
    x = images(cfg)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(pixel_values=x).logits, rtol=0, atol=ATOL)


def test_hybrids_have_no_hugging_face_form() -> None:
    model = VisionTransformer(model_config("vit_small_r26_s32", img_size=32, depth=1,
                                           backbone={"layers": [1], "widths": [256]}))  # fmt: skip
    with pytest.raises(ValueError, match="no hybrid"):
        hf_config_dict(model.config)
    with pytest.raises(ValueError, match="no hybrid"):
        to_hf(model)


def _hf_dir_with_index(tmp_path, weight_map_file: str):
    """A save_pretrained-style dir whose index names `weight_map_file` for every tensor."""
    from safetensors.torch import save_file

    cfg = ViTConfig(img_size=32, patch_size=8, dim=32, depth=1, num_heads=2, num_classes=3)
    state = to_hf(VisionTransformer(cfg))
    root = tmp_path / "model"
    root.mkdir()
    (root / "config.json").write_text(json.dumps({**hf_config_dict(cfg), "model_type": "vit"}))
    index = {"weight_map": dict.fromkeys(state, weight_map_file)}
    (root / "model.safetensors.index.json").write_text(json.dumps(index))
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "outside.safetensors"))
    return root


def test_load_hf_dir_reads_an_index_inside_the_dir(tmp_path) -> None:
    root = _hf_dir_with_index(tmp_path, "weights/part-1.safetensors")
    (root / "weights").mkdir()
    os.replace(tmp_path / "outside.safetensors", root / "weights" / "part-1.safetensors")
    assert load_hf_dir(root).config.num_classes == 3


@pytest.mark.parametrize("where", ["dotdot", "absolute", "symlink", "symlinked-single-file"])
def test_load_hf_dir_refuses_weight_files_outside_the_dir(tmp_path, where: str) -> None:
    outside = tmp_path / "outside.safetensors"
    names = {"dotdot": "../outside.safetensors", "absolute": str(outside), "symlink": "link.st"}
    root = _hf_dir_with_index(tmp_path, names.get(where, "x"))
    if where in ("symlink", "symlinked-single-file"):
        target = "link.st" if where == "symlink" else "model.safetensors"
        (root / target).symlink_to(outside)
    if where == "symlinked-single-file":
        (root / "model.safetensors.index.json").unlink()
    with pytest.raises(ValueError, match="outside the directory") as info:
        load_hf_dir(root)
    assert "\n" not in str(info.value)
