"""The layers a ViT is made of, in dependency order: drop path, patch embedding, attention, MLP,
block. Attribute names follow timm (`proj`, `qkv`, `fc1`, `norm1`, ...) so that timm state dicts
load by name.

Shapes: B batch, C channels, H/W image size, P patch size, N tokens, D width, h heads, d = D / h.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DropPath(nn.Module):
    """Stochastic depth: drop a residual branch per sample, scaling survivors by 1 / keep."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.3f}"


def check_image_size(x: torch.Tensor, img_size: int) -> None:
    """A square input of the model's size; anything else is a clear error, not a shape error."""
    if x.shape[-2] != img_size or x.shape[-1] != img_size:
        raise ValueError(
            f"input image size {tuple(x.shape[-2:])} does not match the model's "
            f"img_size={img_size}; resize the input or call model.resize_pos_embed({x.shape[-1]})"
        )


class PatchEmbed(nn.Module):
    """Non-overlapping P x P patches -> D-dim tokens with one conv (kernel = stride = P)."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, dim: int) -> None:
        super().__init__()
        self.img_size = img_size
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)

    @property
    def grid_size(self) -> int:
        return self.img_size // self.patch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, C, H, W) -> (B, D, H/P, W/P) -> (B, N, D)
        check_image_size(x, self.img_size)
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention: one fused qkv Linear, SDPA, output projection."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, num_queries: int = 0) -> torch.Tensor:
        """(B, N, D) -> (B, N, D); with `num_queries` n > 0, (B, n, D): only the first n tokens
        query."""
        B, N, D = x.shape
        # (B, N, 3D) -> 3 x (B, N, h, d) -> (B, h, N, d): views only. Splitting on dim 2 (not
        # permuting 3 to the front, as timm does) lets backward stack the q, k, v grads straight
        # into the contiguous (B, N, 3D) layout the qkv Linear's backward needs: one copy less.
        qkv = self.qkv(x).view(B, N, 3, self.num_heads, self.head_dim)
        q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))
        if num_queries:
            q = q[:, :, :num_queries]
        dropout_p = self.attn_drop if self.training else 0.0
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)  # (B, h, Nq, d)
        x = x.transpose(1, 2).reshape(B, q.shape[2], D)
        return self.proj_drop(self.proj(x))


class Mlp(nn.Module):
    """Linear -> GELU (exact) -> Linear, dropout after each Linear as in the paper."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)), then x + mlp(LN(x)), each with drop path."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_hidden_dim: int,
        qkv_bias: bool = True,
        ln_eps: float = 1e-6,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=ln_eps)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop=attn_drop, proj_drop=drop)
        self.norm2 = nn.LayerNorm(dim, eps=ln_eps)
        self.mlp = Mlp(dim, mlp_hidden_dim, drop=drop)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, num_queries: int = 0) -> torch.Tensor:
        """(B, N, D) -> (B, N, D); with `num_queries` n > 0, only the first n tokens' outputs
        (B, n, D): for the last block under class-token pooling, where the patch tokens' outputs
        go unused (n is 1, or 2 with a distillation token)."""
        if num_queries:
            x = x[:, :num_queries] + self.drop_path(self.attn(self.norm1(x), num_queries))
        else:
            x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))
