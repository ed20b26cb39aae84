"""ViTConfig: the one typed, frozen description of a Vision Transformer.

Every model, preset, converter and FLOP count is derived from this object, so a run's model is
fully described by `config.to_dict()` (a JSON-able dict) and rebuilt by `ViTConfig.from_dict`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, fields
from typing import Any

POOLS = ("cls", "mean")
HEADS = ("mlp", "linear")


def _close_match(name: str, allowed: list[str]) -> str:
    match = difflib.get_close_matches(name, allowed, n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


@dataclass(frozen=True, kw_only=True)
class ViTConfig:
    """Architecture of a ViT; defaults are ViT-B/16 at 224 px with a 1000-way linear head."""

    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    ln_eps: float = 1e-6
    pool: str = (
        "cls"  # "cls": class token; "mean": mean of the patch tokens (timm global_pool="avg")
    )
    head: str = (
        "linear"  # "mlp": Linear -> tanh -> Linear (paper pretraining); "linear": fine-tuning
    )
    head_hidden_dim: int | None = None  # hidden width of the mlp head; None means dim
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    head_bias_init: float = 0.0  # big_vision uses -10 with a sigmoid loss

    def __post_init__(self) -> None:
        self._check_types()
        positive = (
            "img_size",
            "patch_size",
            "in_chans",
            "num_classes",
            "dim",
            "depth",
            "num_heads",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"ViTConfig.{name}={getattr(self, name)!r}: must be >= 1")
        if self.img_size % self.patch_size:
            raise ValueError(
                f"ViTConfig.img_size={self.img_size!r}: must be a multiple of "
                f"patch_size={self.patch_size} (e.g. {self.patch_size * max(1, self.grid_size)})"
            )
        if self.dim % self.num_heads:
            raise ValueError(
                f"ViTConfig.dim={self.dim!r}: must be divisible by num_heads={self.num_heads}"
            )
        if not (math.isfinite(self.mlp_ratio) and int(self.dim * self.mlp_ratio) >= 1):
            raise ValueError(
                f"ViTConfig.mlp_ratio={self.mlp_ratio!r}: must be > 0 with int(dim * mlp_ratio) >= 1"
            )
        if not (math.isfinite(self.ln_eps) and self.ln_eps > 0):
            raise ValueError(f"ViTConfig.ln_eps={self.ln_eps!r}: must be a finite number > 0")
        if self.pool not in POOLS:
            raise ValueError(f"ViTConfig.pool={self.pool!r}: allowed values are {list(POOLS)}")
        if self.head not in HEADS:
            raise ValueError(f"ViTConfig.head={self.head!r}: allowed values are {list(HEADS)}")
        if self.head_hidden_dim is not None:
            if self.head_hidden_dim < 1:
                raise ValueError(
                    f"ViTConfig.head_hidden_dim={self.head_hidden_dim!r}: must be >= 1 or None"
                )
            if self.head != "mlp":
                raise ValueError(
                    f"ViTConfig.head_hidden_dim={self.head_hidden_dim!r}: only used with "
                    f"head='mlp' (head is {self.head!r}); set it to None"
                )
        for name in ("drop_rate", "attn_drop_rate", "drop_path_rate"):
            rate = getattr(self, name)
            if not 0.0 <= rate < 1.0:
                raise ValueError(f"ViTConfig.{name}={rate!r}: must be in [0, 1)")
        if not math.isfinite(self.head_bias_init):
            raise ValueError(f"ViTConfig.head_bias_init={self.head_bias_init!r}: must be finite")

    def _check_types(self) -> None:
        """Reject wrong types (YAML strings, bools for ints); promote ints to float fields."""
        for f in fields(self):
            value = getattr(self, f.name)
            expected = f.type
            if expected == "float":
                if isinstance(value, int) and not isinstance(value, bool):
                    object.__setattr__(self, f.name, float(value))
                elif not isinstance(value, float):
                    raise ValueError(f"ViTConfig.{f.name}={value!r}: must be a number")
            elif expected in ("int", "int | None"):
                if value is None and expected == "int | None":
                    continue
                if isinstance(value, bool) or not isinstance(value, int):
                    kind = "an integer or None" if expected == "int | None" else "an integer"
                    raise ValueError(f"ViTConfig.{f.name}={value!r}: must be {kind}")
            elif expected == "bool":
                if not isinstance(value, bool):
                    raise ValueError(f"ViTConfig.{f.name}={value!r}: must be true or false")
            elif expected == "str" and not isinstance(value, str):
                raise ValueError(f"ViTConfig.{f.name}={value!r}: must be a string")

    @property
    def grid_size(self) -> int:
        """Patches per side."""
        return self.img_size // self.patch_size

    @property
    def num_patches(self) -> int:
        """Patch tokens per image (the class token not included)."""
        return self.grid_size**2

    @property
    def mlp_hidden_dim(self) -> int:
        """Hidden width of each block's MLP (timm's `int(dim * mlp_ratio)`)."""
        return int(self.dim * self.mlp_ratio)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every field, for YAML/JSON and checkpoints."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ViTConfig:
        """Inverse of `to_dict`; unknown keys are an error (typos must not pass silently)."""
        allowed = [f.name for f in fields(cls)]
        unknown = [k for k in d if k not in allowed]
        if unknown:
            key = unknown[0]
            raise ValueError(
                f"ViTConfig: unknown field {key!r}{_close_match(str(key), allowed)}; "
                f"allowed fields are {allowed}"
            )
        return cls(**d)

    def replace(self, **changes: Any) -> ViTConfig:
        """A validated copy with some fields changed."""
        allowed = [f.name for f in fields(self)]
        for key in changes:
            if key not in allowed:
                raise ValueError(
                    f"ViTConfig: unknown field {key!r}{_close_match(key, allowed)}; "
                    f"allowed fields are {allowed}"
                )
        return dataclasses.replace(self, **changes)
