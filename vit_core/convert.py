"""Interop with timm's VisionTransformer and Hugging Face transformers' ViT.

Nothing here imports timm or transformers: converters take already-built model objects (read
through their attributes and state dicts) and return our model or a plain state dict, and
`load_hf_dir` reads a `save_pretrained` directory with json + safetensors/torch only.

timm names are ours (see model.py), so timm conversion is a check of the architecture plus
`load_state_dict`. Hugging Face differs: separate q/k/v Linears (concatenated into our fused
`qkv`), `layernorm_before/after`, a position embedding that includes the class token (as ours),
LayerNorm eps 1e-12 by default (carried into `ViTConfig.ln_eps`), and an optional pooler
(Linear + tanh on the class token) that is exactly our mlp head's hidden layer `pre_logits.fc`.
"""

from __future__ import annotations

import functools
import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import ViTConfig
from .model import VisionTransformer

# ----------------------------------------------------------------------------------------- timm

_TIMM_POOL = {"token": "cls", "avg": "mean"}


def _require(ok: bool, what: str) -> None:
    if not ok:
        raise ValueError(f"unsupported source model: {what}; vit_core implements the plain ViT")


def _eps_of(norms: list[nn.Module]) -> float:
    for norm in norms:
        _require(
            isinstance(norm, nn.LayerNorm) and norm.weight is not None and norm.bias is not None,
            f"a {type(norm).__name__} where an affine LayerNorm is expected",
        )
    eps = {float(n.eps) for n in norms}
    _require(len(eps) == 1, f"LayerNorms with different eps {sorted(eps)}")
    return eps.pop()


def config_from_timm(timm_model: nn.Module) -> ViTConfig:
    """ViTConfig of a timm `VisionTransformer`; ValueError for features we do not implement."""
    m = timm_model
    _require(type(m).__name__ == "VisionTransformer", f"{type(m).__name__} is not timm's ViT")
    _require(getattr(m, "cls_token", None) is not None, "no class token (class_token=False)")
    _require(getattr(m, "reg_token", None) is None, "register tokens (reg_tokens > 0)")
    _require(not getattr(m, "no_embed_class", False), "no_embed_class=True")
    _require(getattr(m, "pos_embed", None) is not None, "no learned position embedding")
    _require(getattr(m, "attn_pool", None) is None, "attention pooling (global_pool='map')")
    _require(m.global_pool in _TIMM_POOL, f"global_pool={m.global_pool!r} (token or avg only)")
    _require(not getattr(m, "pool_include_prefix", False), "pool_include_prefix=True")
    _require(isinstance(m.norm_pre, nn.Identity), "a pre-norm (pre_norm=True)")
    _require(isinstance(m.patch_drop, nn.Identity), "patch dropout")
    pe = m.patch_embed
    _require(isinstance(pe.norm, nn.Identity), "a norm in the patch embedding")
    _require(pe.proj.bias is not None, "a patch embedding without bias")
    _require(pe.img_size is not None and pe.img_size[0] == pe.img_size[1], "non-square images")
    _require(pe.patch_size[0] == pe.patch_size[1], "non-square patches")
    _require(not getattr(pe, "dynamic_img_pad", False), "dynamic_img_pad=True")
    pool = _TIMM_POOL[m.global_pool]
    final = m.norm if pool == "cls" else m.fc_norm
    other = m.fc_norm if pool == "cls" else m.norm
    _require(
        isinstance(other, nn.Identity),
        f"fc_norm placement that differs from timm's default for global_pool={m.global_pool!r}",
    )
    _require(
        isinstance(m.head, nn.Linear),
        "no classifier (num_classes=0); call reset_classifier(n) first",
    )

    dim = m.cls_token.shape[-1]
    blocks = list(m.blocks)
    norms = [final]
    for b in blocks:
        _require(type(b).__name__ == "Block", f"block type {type(b).__name__}")
        _require(
            isinstance(b.ls1, nn.Identity) and isinstance(b.ls2, nn.Identity),
            "layer scale (init_values)",
        )
        a, mlp = b.attn, b.mlp
        _require(type(a).__name__ == "Attention", f"attention type {type(a).__name__}")
        _require(isinstance(a.q_norm, nn.Identity) and isinstance(a.k_norm, nn.Identity), "qk_norm")
        _require(
            isinstance(a.norm, nn.Identity) and getattr(a, "gate", None) is None,
            "scaled/gated attention",
        )
        _require(
            a.proj.bias is not None and a.qkv.out_features == 3 * dim,
            "a non-standard attention projection",
        )
        _require(
            type(mlp).__name__ == "Mlp" and isinstance(mlp.norm, nn.Identity),
            f"MLP type {type(mlp).__name__}",
        )
        _require(
            type(mlp.act) is nn.GELU and mlp.act.approximate == "none", f"MLP activation {mlp.act}"
        )
        _require(mlp.fc1.bias is not None and mlp.fc2.bias is not None, "MLP without biases")
        norms += [b.norm1, b.norm2]
    hidden = blocks[0].mlp.fc1.out_features
    mlp_ratio = hidden / dim
    _require(int(dim * mlp_ratio) == hidden, f"MLP width {hidden} not expressible as dim * ratio")
    last_dp = blocks[-1].drop_path1
    return ViTConfig(
        img_size=int(pe.img_size[0]),
        patch_size=int(pe.patch_size[0]),
        in_chans=pe.proj.in_channels,
        num_classes=m.head.out_features,
        dim=dim,
        depth=len(blocks),
        num_heads=blocks[0].attn.num_heads,
        mlp_ratio=mlp_ratio,
        qkv_bias=blocks[0].attn.qkv.bias is not None,
        ln_eps=_eps_of(norms),
        pool=pool,
        head="linear",
        drop_rate=float(m.pos_drop.p),
        attn_drop_rate=float(blocks[0].attn.attn_drop.p),
        drop_path_rate=float(getattr(last_dp, "drop_prob", 0.0)),
    )


def _match_source(model: VisionTransformer, source: nn.Module) -> VisionTransformer:
    p = next(source.parameters())
    return model.to(device=p.device, dtype=p.dtype)


def from_timm(timm_model: nn.Module) -> VisionTransformer:
    """Our model with the weights of a timm `VisionTransformer` (same logits)."""
    model = VisionTransformer(config_from_timm(timm_model))
    model.load_state_dict(timm_model.state_dict(), strict=True)
    return _match_source(model, timm_model)


def timm_kwargs(config: ViTConfig) -> dict[str, Any]:
    """Keyword arguments that build the matching timm model (head 'linear'; an mlp head's hidden
    layer has no timm counterpart):
    `timm.models.vision_transformer.VisionTransformer(**timm_kwargs(cfg))`."""
    return {
        "img_size": config.img_size,
        "patch_size": config.patch_size,
        "in_chans": config.in_chans,
        "num_classes": config.num_classes,
        "global_pool": {"cls": "token", "mean": "avg"}[config.pool],
        "embed_dim": config.dim,
        "depth": config.depth,
        "num_heads": config.num_heads,
        "mlp_ratio": config.mlp_ratio,
        "qkv_bias": config.qkv_bias,
        "pos_drop_rate": config.drop_rate,
        "proj_drop_rate": config.drop_rate,
        "attn_drop_rate": config.attn_drop_rate,
        "drop_path_rate": config.drop_path_rate,
        "norm_layer": functools.partial(nn.LayerNorm, eps=config.ln_eps),
    }


def to_timm(model: VisionTransformer, head: bool = True) -> dict[str, torch.Tensor]:
    """State dict for timm's `VisionTransformer(**timm_kwargs(model.config))` (strict load).

    With `head=False` the classifier is left out, for a timm model built with num_classes=0.
    timm has no mlp-head hidden layer, so an mlp-head model needs `head=False` or `swap_head`.
    """
    if head and model.config.head == "mlp":
        raise ValueError(
            "to_timm: timm's ViT has no mlp-head hidden layer (pre_logits); "
            "pass head=False for the backbone, or call model.swap_head(num_classes) first"
        )
    skip = ("head.", "pre_logits.")
    return {k: v for k, v in model.state_dict().items() if head or not k.startswith(skip)}


# ----------------------------------------------------------------------------- Hugging Face

# save_pretrained (transformers <= 5 on disk) layout -> transformers 5 module names
_HF_LEGACY = [
    (re.compile(r"^encoder\.layer\."), "layers."),
    (re.compile(r"\.attention\.attention\.(query|key|value)\."), r".attention.\1."),
    (re.compile(r"\.attention\.query\."), ".attention.q_proj."),
    (re.compile(r"\.attention\.key\."), ".attention.k_proj."),
    (re.compile(r"\.attention\.value\."), ".attention.v_proj."),
    (re.compile(r"\.attention\.output\.dense\."), ".attention.o_proj."),
    (re.compile(r"\.intermediate\.dense\."), ".mlp.fc1."),
    (re.compile(r"\.output\.dense\."), ".mlp.fc2."),
]
_HF_BLOCK = {  # HF name under layers.i -> ours under blocks.i
    "layernorm_before": "norm1",
    "attention.o_proj": "attn.proj",
    "layernorm_after": "norm2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_HF_DEFAULTS = {  # transformers.ViTConfig defaults, for config.json files that omit a key
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
    "layer_norm_eps": 1e-12,
    "image_size": 224,
    "patch_size": 16,
    "num_channels": 3,
    "qkv_bias": True,
    "pooler_output_size": None,
    "pooler_act": "tanh",
}


def _hf_get(cfg: Any, key: str) -> Any:
    value = cfg.get(key) if isinstance(cfg, dict) else getattr(cfg, key, None)
    return _HF_DEFAULTS.get(key) if value is None else value


def _square(value: Any, name: str) -> int:
    if isinstance(value, (list, tuple)):
        _require(len(value) == 2 and value[0] == value[1], f"non-square {name} {value}")
        value = value[0]
    return int(value)


def _config_from_hf_fields(
    cfg: Any, num_classes: int, pooler: bool, head_hidden_dim: int | None = None
) -> ViTConfig:
    model_type = _hf_get(cfg, "model_type")
    _require(model_type in (None, "vit"), f"model_type={model_type!r} (only 'vit')")
    act = _hf_get(cfg, "hidden_act")
    _require(act == "gelu", f"hidden_act={act!r} (only exact 'gelu')")
    dim = int(_hf_get(cfg, "hidden_size"))
    hidden = int(_hf_get(cfg, "intermediate_size"))
    _require(int(dim * (hidden / dim)) == hidden, f"intermediate_size={hidden}")
    if pooler:
        _require(_hf_get(cfg, "pooler_act") == "tanh", f"pooler_act={_hf_get(cfg, 'pooler_act')!r}")
        head_hidden_dim = head_hidden_dim or int(_hf_get(cfg, "pooler_output_size") or dim)
    return ViTConfig(
        img_size=_square(_hf_get(cfg, "image_size"), "image_size"),
        patch_size=_square(_hf_get(cfg, "patch_size"), "patch_size"),
        in_chans=int(_hf_get(cfg, "num_channels")),
        num_classes=num_classes,
        dim=dim,
        depth=int(_hf_get(cfg, "num_hidden_layers")),
        num_heads=int(_hf_get(cfg, "num_attention_heads")),
        mlp_ratio=hidden / dim,
        qkv_bias=bool(_hf_get(cfg, "qkv_bias")),
        ln_eps=float(_hf_get(cfg, "layer_norm_eps")),
        pool="cls",
        head="mlp" if pooler else "linear",
        head_hidden_dim=(None if head_hidden_dim == dim else head_hidden_dim) if pooler else None,
        drop_rate=float(_hf_get(cfg, "hidden_dropout_prob")),
        attn_drop_rate=float(_hf_get(cfg, "attention_probs_dropout_prob")),
    )


def _hf_parts(hf_model: nn.Module) -> tuple[nn.Module, nn.Module | None]:
    """(ViTModel, classifier or None) of a ViTModel or ViTForImageClassification."""
    base = getattr(hf_model, "vit", hf_model)
    _require(
        hasattr(base, "embeddings") and hasattr(base, "layers"),
        f"{type(hf_model).__name__} is not a transformers ViT",
    )
    classifier = getattr(hf_model, "classifier", None)
    if classifier is not None:
        _require(
            isinstance(classifier, nn.Linear), "a classifier that is not a Linear (num_labels=0)"
        )
    return base, classifier


def config_from_hf(hf_model: nn.Module) -> ViTConfig:
    """ViTConfig of a transformers `ViTModel` or `ViTForImageClassification`.

    A classifier becomes our linear head; a ViTModel's pooler becomes the mlp head's hidden layer
    and, as a ViTModel has no classifier, the head gets `config.num_labels` outputs.
    """
    base, classifier = _hf_parts(hf_model)
    pooler = getattr(base, "pooler", None)
    if classifier is not None:
        return _config_from_hf_fields(hf_model.config, classifier.out_features, pooler=False)
    num_classes = int(getattr(hf_model.config, "num_labels", 2) or 2)
    hidden = pooler.dense.out_features if pooler is not None else None
    return _config_from_hf_fields(hf_model.config, num_classes, pooler is not None, hidden)


def _normalize_hf_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the `vit.` prefix and map the on-disk legacy layout to transformers 5 names."""
    out = {}
    for key, value in state.items():
        key = key.removeprefix("vit.")
        for pattern, repl in _HF_LEGACY:
            key = pattern.sub(repl, key)
        out[key] = value
    out.pop("embeddings.mask_token", None)  # masked-image-modeling only
    return out


def _hf_pairs(config: ViTConfig, pooler: bool, classifier: bool) -> list[tuple[str, str]]:
    """(HF name, our name) for every tensor except the fused qkv."""
    pairs = [("embeddings.cls_token", "cls_token"), ("embeddings.position_embeddings", "pos_embed")]
    modules = [("embeddings.patch_embeddings.projection", "patch_embed.proj")]
    for i in range(config.depth):
        modules += [(f"layers.{i}.{hf}", f"blocks.{i}.{ours}") for hf, ours in _HF_BLOCK.items()]
    modules.append(("layernorm", "norm"))
    if pooler:
        modules.append(("pooler.dense", "pre_logits.fc"))
    if classifier:
        modules.append(("classifier", "head"))
    for hf, ours in modules:
        pairs += [(f"{hf}.weight", f"{ours}.weight"), (f"{hf}.bias", f"{ours}.bias")]
    return pairs


def _qkv_params(config: ViTConfig) -> list[str]:
    return ["weight", "bias"] if config.qkv_bias else ["weight"]


def _from_hf_state(config: ViTConfig, state: dict[str, torch.Tensor]) -> VisionTransformer:
    state = dict(state)
    pooler, classifier = config.head == "mlp", "classifier.weight" in state
    ours: dict[str, torch.Tensor] = {}
    try:
        for hf, name in _hf_pairs(config, pooler, classifier):
            ours[name] = state.pop(hf)
        for i in range(config.depth):
            for p in _qkv_params(config):
                parts = [state.pop(f"layers.{i}.attention.{n}_proj.{p}") for n in "qkv"]
                ours[f"blocks.{i}.attn.qkv.{p}"] = torch.cat(parts, dim=0)
    except KeyError as err:
        raise ValueError(f"Hugging Face ViT weights lack {err.args[0]!r}") from None
    if state:
        raise ValueError(f"unexpected Hugging Face ViT weights: {sorted(state)[:8]}")
    model = VisionTransformer(config)
    if not classifier:  # a ViTModel has no classifier: start from a zero head, as swap_head does
        ours["head.weight"] = torch.zeros_like(model.head.weight)
        ours["head.bias"] = torch.zeros_like(model.head.bias)
    model.load_state_dict(ours, strict=True)
    return model


def from_hf(hf_model: nn.Module) -> VisionTransformer:
    """Our model with the weights of a transformers `ViTModel` or `ViTForImageClassification`."""
    config = config_from_hf(hf_model)
    model = _from_hf_state(config, _normalize_hf_keys(hf_model.state_dict()))
    return _match_source(model, hf_model)


def hf_config_dict(config: ViTConfig) -> dict[str, Any]:
    """Kwargs for `transformers.ViTConfig(**hf_config_dict(cfg))` describing the same network."""
    if config.pool != "cls":
        raise ValueError(f"pool={config.pool!r}: Hugging Face ViT always pools the class token")
    return {
        "hidden_size": config.dim,
        "num_hidden_layers": config.depth,
        "num_attention_heads": config.num_heads,
        "intermediate_size": config.mlp_hidden_dim,
        "hidden_act": "gelu",
        "hidden_dropout_prob": config.drop_rate,
        "attention_probs_dropout_prob": config.attn_drop_rate,
        "layer_norm_eps": config.ln_eps,
        "image_size": config.img_size,
        "patch_size": config.patch_size,
        "num_channels": config.in_chans,
        "qkv_bias": config.qkv_bias,
        "encoder_stride": config.patch_size,
        "num_labels": config.num_classes,
        "pooler_output_size": config.head_hidden_dim or config.dim,
        "pooler_act": "tanh",
    }


def to_hf(model: VisionTransformer, base_model: bool = False) -> dict[str, torch.Tensor]:
    """State dict for `ViTForImageClassification(ViTConfig(**hf_config_dict(cfg)))` (strict).

    With `base_model=True`: for `ViTModel(cfg, add_pooling_layer=cfg.head == "mlp")` instead,
    the mlp head's hidden layer becoming the pooler (the way to export a pretrained backbone).
    """
    config = model.config
    hf_config_dict(config)  # raises for what HF cannot express
    if not base_model and config.head == "mlp":
        raise ValueError(
            "to_hf: ViTForImageClassification has a linear classifier, no mlp head; pass "
            "base_model=True (ViTModel with pooler) or call model.swap_head(num_classes) first"
        )
    state = model.state_dict()
    pooler = base_model and config.head == "mlp"
    out = {hf: state[ours] for hf, ours in _hf_pairs(config, pooler, classifier=not base_model)}
    for i in range(config.depth):
        for p in _qkv_params(config):
            q, k, v = state[f"blocks.{i}.attn.qkv.{p}"].chunk(3, dim=0)
            for n, t in zip("qkv", (q, k, v), strict=True):
                out[f"layers.{i}.attention.{n}_proj.{p}"] = t.clone()
    if base_model:
        return out
    return {(k if k.startswith("classifier.") else f"vit.{k}"): v for k, v in out.items()}


def _read_hf_weights(root: Path) -> dict[str, torch.Tensor]:
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (root / index_name).is_file():
            shards = sorted(set(json.loads((root / index_name).read_text())["weight_map"].values()))
            state: dict[str, torch.Tensor] = {}
            for shard in shards:
                state.update(_read_weight_file(root / shard))
            return state
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (root / name).is_file():
            return _read_weight_file(root / name)
    raise ValueError(f"{root}: no model.safetensors or pytorch_model.bin (a save_pretrained dir?)")


def _read_weight_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file  # lazy: vit_core imports torch only

        return load_file(str(path), device="cpu")
    return torch.load(path, map_location="cpu", weights_only=True)


def load_hf_dir(path: str | os.PathLike[str]) -> VisionTransformer:
    """Our model from a transformers `save_pretrained` directory (ViTModel or
    ViTForImageClassification), read without importing transformers."""
    root = Path(path)
    config_file = root / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{root}: no config.json (not a Hugging Face save_pretrained directory)")
    cfg = json.loads(config_file.read_text())
    state = _normalize_hf_keys(_read_hf_weights(root))
    if "classifier.weight" in state:
        config = _config_from_hf_fields(cfg, state["classifier.weight"].shape[0], pooler=False)
    else:
        num_classes = len(cfg.get("id2label") or {}) or int(cfg.get("num_labels") or 2)
        pooler = state.get("pooler.dense.weight")
        hidden = pooler.shape[0] if pooler is not None else None
        config = _config_from_hf_fields(cfg, num_classes, pooler is not None, hidden)
    return _from_hf_state(config, state)
