"""Interop with Hugging Face transformers' ViT (`ViTModel`, `ViTForImageClassification`) and
DeiT with its distillation head (`DeiTForImageClassificationWithTeacher`).

Nothing here imports transformers: converters read a built model's config and state dict, and
return our model or a plain state dict. HF differs from us in: separate q/k/v Linears
(concatenated into our fused `qkv`), `layernorm_before/after`, a position embedding that includes
the prefix tokens (as ours), LayerNorm eps 1e-12 by default (carried into `ViTConfig.ln_eps`), an
optional pooler (Linear + tanh on the class token) that is exactly our mlp head's hidden layer
`pre_logits.fc`, and for DeiT `cls_classifier` / `distillation_classifier` for our `head` /
`head_dist`. transformers has no hybrid ViT, so hybrids are refused.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from ..config import ViTConfig
from ..model import VisionTransformer
from .timm_interop import match_source

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
DEIT_CLASSIFIERS = ("cls_classifier", "distillation_classifier")


def _require(ok: bool, what: str) -> None:
    if not ok:
        raise ValueError(
            f"unsupported source model: {what}; vit_core reads Hugging Face ViT and DeiT with "
            "teacher (distillation) heads"
        )


def _hf_get(cfg: Any, key: str) -> Any:
    value = cfg.get(key) if isinstance(cfg, dict) else getattr(cfg, key, None)
    return _HF_DEFAULTS.get(key) if value is None else value


def _square(value: Any, name: str) -> int:
    if isinstance(value, (list, tuple)):
        _require(len(value) == 2 and value[0] == value[1], f"non-square {name} {value}")
        value = value[0]
    return int(value)


def config_from_hf_fields(
    cfg: Any,
    num_classes: int,
    pooler: bool,
    head_hidden_dim: int | None = None,
    distilled: bool = False,
) -> ViTConfig:
    """ViTConfig from the fields of an HF config (object or config.json dict)."""
    model_type = _hf_get(cfg, "model_type")
    allowed = ("deit",) if distilled else (None, "vit")
    _require(
        model_type in allowed,
        f"model_type={model_type!r} (only 'vit', or 'deit' with distillation classifiers)",
    )
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
        distilled=distilled,
    )


def _hf_parts(hf_model: nn.Module) -> tuple[nn.Module, nn.Module | None]:
    """(ViTModel/DeiTModel, classifier or None) of an HF ViT, or of a DeiT with teacher."""
    base = hf_model
    for name in ("vit", "deit"):
        if getattr(hf_model, name, None) is not None:
            base = getattr(hf_model, name)
    _require(
        hasattr(base, "embeddings") and hasattr(base, "layers"),
        f"{type(hf_model).__name__} is not a transformers ViT",
    )
    if getattr(hf_model, "deit", None) is not None:
        _require(
            hasattr(hf_model, "distillation_classifier"),
            f"{type(hf_model).__name__} (of DeiT, only DeiTForImageClassificationWithTeacher)",
        )
        classifier = hf_model.cls_classifier
    else:
        classifier = getattr(hf_model, "classifier", None)
    if classifier is not None:
        _require(
            isinstance(classifier, nn.Linear), "a classifier that is not a Linear (num_labels=0)"
        )
    return base, classifier


def config_from_hf(hf_model: nn.Module) -> ViTConfig:
    """ViTConfig of a transformers `ViTModel`, `ViTForImageClassification` or
    `DeiTForImageClassificationWithTeacher` (a distilled config).

    A classifier becomes our linear head; a ViTModel's pooler becomes the mlp head's hidden layer
    and, as a ViTModel has no classifier, the head gets `config.num_labels` outputs.
    """
    base, classifier = _hf_parts(hf_model)
    distilled = getattr(hf_model, "deit", None) is not None
    pooler = getattr(base, "pooler", None)
    if classifier is not None:
        return config_from_hf_fields(
            hf_model.config, classifier.out_features, pooler=False, distilled=distilled
        )
    num_classes = int(getattr(hf_model.config, "num_labels", 2) or 2)
    hidden = pooler.dense.out_features if pooler is not None else None
    return config_from_hf_fields(hf_model.config, num_classes, pooler is not None, hidden)


def normalize_hf_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the `vit.`/`deit.` prefix and map the on-disk legacy layout to transformers 5."""
    out = {}
    for key, value in state.items():
        key = key.removeprefix("vit.").removeprefix("deit.")
        for pattern, repl in _HF_LEGACY:
            key = pattern.sub(repl, key)
        out[key] = value
    out.pop("embeddings.mask_token", None)  # masked-image-modeling only
    return out


def _hf_pairs(config: ViTConfig, pooler: bool, classifier: bool) -> list[tuple[str, str]]:
    """(HF name, our name) for every tensor except the fused qkv."""
    pairs = [("embeddings.cls_token", "cls_token"), ("embeddings.position_embeddings", "pos_embed")]
    if config.distilled:
        pairs.append(("embeddings.distillation_token", "dist_token"))
    modules = [("embeddings.patch_embeddings.projection", "patch_embed.proj")]
    for i in range(config.depth):
        modules += [(f"layers.{i}.{hf}", f"blocks.{i}.{ours}") for hf, ours in _HF_BLOCK.items()]
    modules.append(("layernorm", "norm"))
    if pooler:
        modules.append(("pooler.dense", "pre_logits.fc"))
    if classifier and config.distilled:
        modules += list(zip(DEIT_CLASSIFIERS, ("head", "head_dist"), strict=True))
    elif classifier:
        modules.append(("classifier", "head"))
    for hf, ours in modules:
        pairs += [(f"{hf}.weight", f"{ours}.weight"), (f"{hf}.bias", f"{ours}.bias")]
    return pairs


def _qkv_params(config: ViTConfig) -> list[str]:
    return ["weight", "bias"] if config.qkv_bias else ["weight"]


def from_hf_state(config: ViTConfig, state: dict[str, torch.Tensor]) -> VisionTransformer:
    """Our model from a normalised HF state dict (see `normalize_hf_keys`)."""
    state = dict(state)
    pooler = config.head == "mlp"
    classifier = "classifier.weight" in state or "cls_classifier.weight" in state
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
    """Our model with the weights of a transformers `ViTModel`, `ViTForImageClassification` or
    `DeiTForImageClassificationWithTeacher`."""
    config = config_from_hf(hf_model)
    model = from_hf_state(config, normalize_hf_keys(hf_model.state_dict()))
    return match_source(model, hf_model)


def hf_architecture(config: ViTConfig, base_model: bool = False) -> tuple[str, str]:
    """(model_type, class name) that `to_hf` writes for: `('vit', 'ViTForImageClassification')`,
    `('vit', 'ViTModel')` with `base_model`, `('deit', 'DeiTForImageClassificationWithTeacher')`
    for a distilled model."""
    hf_config_dict(config)  # raises for what HF cannot express
    if config.distilled:
        return "deit", "DeiTForImageClassificationWithTeacher"
    return "vit", "ViTModel" if base_model else "ViTForImageClassification"


def hf_config_dict(config: ViTConfig) -> dict[str, Any]:
    """Kwargs for `transformers.ViTConfig(**hf_config_dict(cfg))` (`DeiTConfig` for a distilled
    model) describing the same network."""
    if config.backbone is not None:
        raise ValueError(
            "Hugging Face transformers has no hybrid (CNN backbone) ViT; export a hybrid with "
            "--format safetensors or timm"
        )
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
    """State dict for `ViTForImageClassification(ViTConfig(**hf_config_dict(cfg)))` (strict), or
    `DeiTForImageClassificationWithTeacher(DeiTConfig(...))` for a distilled model.

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
    if base_model and config.distilled:
        raise ValueError("to_hf: a distilled model exports whole (DeiT with teacher heads)")
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
    prefix = "deit." if config.distilled else "vit."
    keep = ("classifier.", *(f"{c}." for c in DEIT_CLASSIFIERS))
    return {(k if k.startswith(keep) else f"{prefix}{k}"): v for k, v in out.items()}
