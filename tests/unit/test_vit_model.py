"""VisionTransformer behaviour: API shapes, heads, init, stochastic depth, checkpointing,
position-embedding resampling, torch.compile and bf16 autocast. Tiny models, CPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vit_core import VisionTransformer, ViTConfig, resample_pos_embed


def tiny(**changes) -> ViTConfig:
    base = {
        "img_size": 32,
        "patch_size": 8,
        "dim": 32,
        "depth": 2,
        "num_heads": 2,
        "num_classes": 5,
    }
    return ViTConfig(**{**base, **changes})


def images(cfg: ViTConfig, batch: int = 2, size: int | None = None) -> torch.Tensor:
    size = size or cfg.img_size
    return torch.randn(batch, cfg.in_chans, size, size, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("pool", ["cls", "mean"])
@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_api_shapes(pool: str, head: str) -> None:
    cfg = tiny(pool=pool, head=head, head_hidden_dim=48 if head == "mlp" else None)
    model = VisionTransformer(cfg).eval()
    x = images(cfg)
    feats = model.forward_features(x)
    assert feats.shape == (2, 1 + cfg.num_patches, cfg.dim)
    assert model.forward_head(feats, pre_logits=True).shape == (2, 48 if head == "mlp" else 32)
    # forward skips the last block's unused patch-token outputs under cls pooling: same logits
    torch.testing.assert_close(model(x), model.forward_head(feats), rtol=1e-5, atol=1e-6)
    assert model(x).shape == (2, 5)
    assert model.no_weight_decay() == {"pos_embed", "cls_token"}
    assert model.get_classifier() is model.head


def test_mlp_head_is_linear_tanh_linear() -> None:
    model = VisionTransformer(tiny(head="mlp", head_hidden_dim=48)).eval()
    fc, act = model.pre_logits.fc, model.pre_logits.act
    assert isinstance(fc, nn.Linear) and (fc.in_features, fc.out_features) == (32, 48)
    assert isinstance(act, nn.Tanh)
    assert (model.head.in_features, model.head.out_features) == (48, 5)
    feats = model.forward_features(images(model.config))
    expected = model.head(torch.tanh(fc(feats[:, 0])))
    torch.testing.assert_close(model.forward_head(feats), expected)


def test_pooling_and_norm_placement_follow_timm() -> None:
    cls_model = VisionTransformer(tiny(pool="cls"))
    assert isinstance(cls_model.norm, nn.LayerNorm) and isinstance(cls_model.fc_norm, nn.Identity)
    mean_model = VisionTransformer(tiny(pool="mean", ln_eps=1e-5)).eval()
    assert isinstance(mean_model.norm, nn.Identity) and mean_model.fc_norm.eps == 1e-5
    feats = mean_model.forward_features(images(mean_model.config))
    expected = mean_model.head(mean_model.fc_norm(feats[:, 1:].mean(1)))
    torch.testing.assert_close(mean_model.forward_head(feats), expected)


def test_init_follows_timm_and_head_bias_init() -> None:
    torch.manual_seed(0)
    model = VisionTransformer(tiny(dim=256, num_heads=4, head="mlp", head_bias_init=-10.0))
    assert model.cls_token.abs().max() < 1e-4
    assert 0.015 < model.pos_embed.std() < 0.025
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            assert 0.015 < m.weight.std() < 0.025, name
            bias = -10.0 if name == "head" else 0.0
            assert torch.equal(m.bias, torch.full_like(m.bias, bias)), name
        elif isinstance(m, nn.LayerNorm):
            assert torch.equal(m.weight, torch.ones_like(m.weight)) and not m.bias.any()


def test_swap_head_installs_zero_linear_head() -> None:
    for head in ("linear", "mlp"):
        model = VisionTransformer(tiny(head=head)).eval()
        x = images(model.config)
        feats = model.forward_features(x)
        pooled = model.fc_norm(feats[:, 0])  # what the head (or the mlp head's hidden layer) sees
        old_config = model.config
        model.swap_head(9)
        assert isinstance(model.pre_logits, nn.Identity) and isinstance(model.head, nn.Linear)
        assert not model.head.weight.any() and not model.head.bias.any()
        assert model.config == old_config.replace(
            head="linear", num_classes=9, head_hidden_dim=None
        )
        assert model(x).shape == (2, 9) and not model(x).any()
        assert torch.equal(model.forward_features(x), feats)
        assert torch.equal(model.forward_head(feats, pre_logits=True), pooled)
        model.reset_classifier(4)  # timm alias
        assert model(x).shape == (2, 4)
    with pytest.raises(ValueError, match="num_classes"):
        model.swap_head(0)


def test_drop_path_rates_grow_linearly_and_act_only_in_training() -> None:
    model = VisionTransformer(tiny(depth=4, drop_path_rate=0.3))
    rates = [b.drop_path.drop_prob for b in model.blocks]
    assert rates == pytest.approx([0.0, 0.1, 0.2, 0.3])
    x = images(model.config, batch=8)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    torch.manual_seed(1)
    assert not torch.equal(model(x), model(x))


def test_grad_checkpointing_gives_the_same_grads() -> None:
    torch.manual_seed(0)
    model = VisionTransformer(tiny(depth=3, drop_path_rate=0.2, drop_rate=0.1))
    x = images(model.config)

    def grads(checkpointing: bool) -> list[torch.Tensor]:
        model.zero_grad()
        model.set_grad_checkpointing(checkpointing)
        torch.manual_seed(7)  # same dropout / drop-path masks; checkpoint replays the RNG
        model(x).square().sum().backward()
        return [p.grad.clone() for p in model.parameters()]

    for a, b in zip(grads(False), grads(True), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_wrong_input_size_is_a_clear_error() -> None:
    model = VisionTransformer(tiny())
    with pytest.raises(ValueError, match=r"\(48, 48\).*img_size=32"):
        model(torch.randn(1, 3, 48, 48))
    with pytest.raises(TypeError, match="ViTConfig"):
        VisionTransformer({"dim": 32})  # type: ignore[arg-type]


def test_resize_pos_embed_to_same_size_is_identity() -> None:
    model = VisionTransformer(tiny())
    before = model.pos_embed.detach().clone()
    param = model.pos_embed
    model.resize_pos_embed(32)
    assert model.pos_embed is param and torch.equal(model.pos_embed, before)


@pytest.mark.parametrize("mode", ["bicubic", "bilinear"])
@pytest.mark.parametrize("new_size", [48, 16, 24])
def test_resize_pos_embed_matches_timm(mode: str, new_size: int) -> None:
    timm_layers = pytest.importorskip("timm.layers")
    model = VisionTransformer(tiny())
    old = model.pos_embed.detach().clone()
    model.resize_pos_embed(new_size, mode=mode)
    grid = new_size // 8
    expected = timm_layers.resample_abs_pos_embed(old, [grid, grid], [4, 4], 1, interpolation=mode)
    assert model.pos_embed.shape == (1, 1 + grid * grid, 32)
    torch.testing.assert_close(model.pos_embed.detach(), expected, rtol=0, atol=1e-5)
    assert torch.equal(model.pos_embed[:, :1], old[:, :1])  # class-token embedding kept
    assert model.config.img_size == new_size == model.patch_embed.img_size
    assert model(images(model.config)).shape == (2, 5)
    with pytest.raises(ValueError, match=rf"model's img_size={new_size}"):
        model(images(model.config, size=32))


def test_resample_pos_embed_rejects_bad_input() -> None:
    pos = torch.randn(1, 17, 8)
    assert resample_pos_embed(pos, 4, 4) is pos
    assert resample_pos_embed(pos, (2, 3), (4, 4)).shape == (1, 7, 8)
    with pytest.raises(ValueError, match="mode="):
        resample_pos_embed(pos, 2, 4, mode="nearest")
    with pytest.raises(ValueError, match="old grid of 3x3"):
        resample_pos_embed(pos, 2, 3)
    with pytest.raises(ValueError, match=r"ViTConfig\.img_size=30"):
        VisionTransformer(tiny()).resize_pos_embed(30)


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_compile_fullgraph_no_graph_breaks_train_step(pool: str) -> None:
    torch.manual_seed(0)
    model = VisionTransformer(tiny(pool=pool, head="mlp", drop_path_rate=0.1, drop_rate=0.1))
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    compiled(images(model.config)).sum().backward()  # fullgraph=True raises on any graph break
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.slow
def test_compile_inductor_matches_eager() -> None:
    model = VisionTransformer(tiny()).eval()
    x = images(model.config)
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-5)


def test_bf16_autocast_on_cpu() -> None:
    model = VisionTransformer(tiny(head="mlp", pool="mean"))
    x = images(model.config)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()
    logits.float().sum().backward()
    assert model.blocks[0].attn.qkv.weight.grad.dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(logits.float(), model(x), rtol=0.1, atol=0.1)
