"""VisionTransformer: the paper's ViT ("An Image is Worth 16x16 Words", Dosovitskiy et al. 2021)
with timm's API and parameter names.

Shapes:
    B  batch size              C  input channels (config.in_chans)
    S  image side (img_size)   P  patch side (patch_size)      G = S / P patches per side
    N  = G * G patch tokens    T  = 1 + N tokens (class token first)
    D  width (config.dim)      K  classes (config.num_classes)

    image (B, C, S, S) -> patch_embed (B, N, D) -> + cls, + pos_embed (B, T, D) -> blocks (B, T, D)
    -> norm -> pool (B, D) -> [pre_logits: Linear + tanh] -> head (B, K)
    (`forward` with cls pooling: the last block outputs the class token only, (B, 1, D))

Parameter names match timm's VisionTransformer (`patch_embed.proj`, `cls_token`, `pos_embed`,
`blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}`, `norm` or `fc_norm`, `head`), plus
`pre_logits.fc` for the mlp head, so timm conversion is the identity on names.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import ViTConfig
from .layers import Block, PatchEmbed
from .pos_embed import resample_pos_embed


class VisionTransformer(nn.Module):
    """ViT classifier built from exactly one `ViTConfig`."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        if not isinstance(config, ViTConfig):
            raise TypeError(f"VisionTransformer takes a ViTConfig, got {type(config).__name__}")
        self.config = config
        self.grad_checkpointing = False
        self.num_prefix_tokens = 1
        c = config
        self.patch_embed = PatchEmbed(c.img_size, c.patch_size, c.in_chans, c.dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + c.num_patches, c.dim))
        self.pos_drop = nn.Dropout(c.drop_rate)
        # stochastic depth grows linearly from 0 at the first block to drop_path_rate at the last
        rates = torch.linspace(0, c.drop_path_rate, c.depth, device="cpu").tolist()
        self.blocks = nn.Sequential(
            *[
                Block(
                    c.dim,
                    c.num_heads,
                    c.mlp_hidden_dim,
                    qkv_bias=c.qkv_bias,
                    ln_eps=c.ln_eps,
                    drop=c.drop_rate,
                    attn_drop=c.attn_drop_rate,
                    drop_path=rate,
                )
                for rate in rates
            ]
        )
        # timm: with mean pooling the final norm moves after the pool (fc_norm), else it is `norm`
        final_norm = nn.LayerNorm(c.dim, eps=c.ln_eps)
        self.norm = final_norm if c.pool == "cls" else nn.Identity()
        self.fc_norm = final_norm if c.pool == "mean" else nn.Identity()
        self.pre_logits = self._make_pre_logits(c)
        head_in = (c.head_hidden_dim or c.dim) if c.head == "mlp" else c.dim
        self.head = nn.Linear(head_in, c.num_classes)
        self.init_weights()

    @staticmethod
    def _make_pre_logits(c: ViTConfig) -> nn.Module:
        if c.head != "mlp":
            return nn.Identity()
        fc = nn.Linear(c.dim, c.head_hidden_dim or c.dim)
        return nn.Sequential(OrderedDict(fc=fc, act=nn.Tanh()))

    @torch.no_grad()
    def init_weights(self) -> None:
        """timm's default init: trunc-normal(0.02) Linear weights and pos_embed, zero biases,
        normal(1e-6) class token, LayerNorm ones/zeros, PyTorch's default for the patch conv."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.constant_(self.head.bias, self.config.head_bias_init)

    def _encode(self, x: torch.Tensor, cls_only: bool = False) -> torch.Tensor:
        """Images (B, C, S, S) -> tokens (B, T, D) before the final norm; with `cls_only` the
        last block computes the class token alone (B, 1, D), all that cls pooling reads."""
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.pos_drop(x + self.pos_embed)
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            last_cls_only = cls_only and i == last
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, last_cls_only, use_reentrant=False)
            else:
                x = block(x, last_cls_only)
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) images -> (B, T, D) tokens after the final norm (before it for mean pool,
        where, as in timm, the norm is applied to the pooled vector in `forward_head`)."""
        return self.norm(self._encode(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, T, D) tokens -> (B, K) logits, or with `pre_logits` the (B, D') representation the
        final Linear sees (for the mlp head: after its hidden Linear and tanh)."""
        x = x[:, 1:].mean(dim=1) if self.config.pool == "mean" else x[:, 0]
        x = self.pre_logits(self.fc_norm(x))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Logits (or, with `pre_logits`, the representation few-shot probes use); equal to
        `forward_head(forward_features(x), pre_logits)`, but with cls pooling the last block
        skips the patch tokens' outputs (its MLP and projection on N tokens: ~6% of the compute
        of a 12-block model), since the head never reads them. Going through `forward` also
        keeps wrappers that hook the top-level call (DeepSpeed ZeRO-3) working."""
        x = self.norm(self._encode(x, cls_only=self.config.pool == "cls"))
        return self.forward_head(x, pre_logits=pre_logits)

    def no_weight_decay(self) -> set[str]:
        """Parameters that AdamW must not decay (biases and norms are excluded by ndim)."""
        return {"pos_embed", "cls_token"}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in backward: memory for ~1/3 more compute."""
        self.grad_checkpointing = enable

    def get_classifier(self) -> nn.Module:
        return self.head

    def swap_head(self, num_classes: int) -> None:
        """Drop the head (and the mlp head's hidden layer) for a zero-initialised Linear with
        `num_classes` outputs: the fine-tuning recipe of the paper (section 3.2)."""
        new_config = self.config.replace(
            head="linear", num_classes=num_classes, head_hidden_dim=None
        )
        weight = self.head.weight
        head = nn.Linear(self.config.dim, num_classes, device=weight.device, dtype=weight.dtype)
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
        self.pre_logits = nn.Identity()
        self.head = head.train(self.training)
        self.config = new_config

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """timm-compatible alias of `swap_head` (zero-initialised; pooling cannot change)."""
        timm_pool = {"cls": "token", "mean": "avg"}[self.config.pool]
        if global_pool is not None and global_pool != timm_pool:
            raise ValueError(
                f"global_pool={global_pool!r}: this model pools with {timm_pool!r}; "
                "changing the pooling needs a new model"
            )
        self.swap_head(num_classes)

    @torch.no_grad()
    def resize_pos_embed(self, img_size: int, mode: str = "bicubic") -> None:
        """Run at a new image size: resample the patch part of pos_embed in 2D (class token kept).

        Replaces the `pos_embed` Parameter, so build the optimizer after calling this.
        """
        new_config = self.config.replace(img_size=img_size)
        if new_config.grid_size != self.config.grid_size:
            new = resample_pos_embed(
                self.pos_embed.detach(),
                new_config.grid_size,
                self.config.grid_size,
                num_prefix_tokens=self.num_prefix_tokens,
                mode=mode,
            )
            self.pos_embed = nn.Parameter(new, requires_grad=self.pos_embed.requires_grad)
        elif mode not in ("bicubic", "bilinear"):
            raise ValueError(f"mode={mode!r}: allowed values are ['bicubic', 'bilinear']")
        self.patch_embed.img_size = img_size
        self.config = new_config


def num_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared ones counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
