"""VisionTransformer: the paper's ViT ("An Image is Worth 16x16 Words", Dosovitskiy et al. 2021)
with timm's API and parameter names, in its three forms: plain, hybrid (tokens cut from a CNN
feature map, section 3.1 of the paper) and DeiT's distilled ViT (Touvron et al. 2021: a
distillation token beside the class token, with its own head).

Shapes:
    B  batch size              C  input channels (config.in_chans)
    S  image side (img_size)   P  patch side in pixels (patch_size x the backbone's stride)
    G = S / P patches per side N = G * G patch tokens
    R  prefix tokens: 1 (class), or 2 (class, distillation)       T = R + N tokens
    D  width (config.dim)      K  classes (config.num_classes)

    image (B, C, S, S) -> patch_embed (B, N, D) -> prefix tokens, + pos_embed (B, T, D)
    -> blocks (B, T, D) -> norm -> pool (B, D) -> [pre_logits: Linear + tanh] -> head (B, K)
    distilled: head(token 0) and head_dist(token 1), averaged unless distilled training
    (`forward` with cls pooling: the last block outputs the prefix tokens only, (B, R, D))

Parameter names match timm's VisionTransformer / VisionTransformerDistilled (`patch_embed.proj`,
`patch_embed.backbone.*` for a hybrid, `cls_token`, `dist_token`, `pos_embed`,
`blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}`, `norm` or `fc_norm`, `head`,
`head_dist`), plus `pre_logits.fc` for the mlp head, so timm conversion is the identity on names.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .backbone import HybridEmbed, build_backbone
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
        self.distilled_training = False  # timm: both heads' logits in training when enabled
        self.num_prefix_tokens = config.num_prefix_tokens
        c = config
        self.patch_embed = self._make_patch_embed(c)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.dim))
        if c.distilled:
            self.dist_token = nn.Parameter(torch.zeros(1, 1, c.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_prefix_tokens + c.num_patches, c.dim))
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
        if c.distilled:
            self.head_dist = nn.Linear(c.dim, c.num_classes)
        self.init_weights()

    @staticmethod
    def _make_patch_embed(c: ViTConfig) -> nn.Module:
        if c.backbone is None:
            return PatchEmbed(c.img_size, c.patch_size, c.in_chans, c.dim)
        b = c.backbone
        backbone = build_backbone(b, c.in_chans)
        return HybridEmbed(backbone, c.img_size, b.stride, b.out_channels, c.patch_size, c.dim)

    @staticmethod
    def _make_pre_logits(c: ViTConfig) -> nn.Module:
        if c.head != "mlp":
            return nn.Identity()
        fc = nn.Linear(c.dim, c.head_hidden_dim or c.dim)
        return nn.Sequential(OrderedDict(fc=fc, act=nn.Tanh()))

    @torch.no_grad()
    def init_weights(self) -> None:
        """timm's default init: trunc-normal(0.02) Linear weights, pos_embed and distillation
        token, zero biases, normal(1e-6) class token, norms ones/zeros, PyTorch's default for the
        patch conv; a hybrid backbone's convs He-normal (fan-out), as timm's ResNetV2."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.LayerNorm, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for head in self._heads():
            nn.init.constant_(head.bias, self.config.head_bias_init)
        if self.config.distilled:
            nn.init.trunc_normal_(self.dist_token, std=0.02)
        if self.config.backbone is not None:
            for m in self.patch_embed.backbone.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _heads(self) -> list[nn.Linear]:
        return [self.head, self.head_dist] if self.config.distilled else [self.head]

    def _prefix(self, batch: int) -> torch.Tensor:
        """(B, R, D): the class token, then the distillation token if any."""
        if not self.config.distilled:
            return self.cls_token.expand(batch, -1, -1)
        return torch.cat([self.cls_token, self.dist_token], dim=1).expand(batch, -1, -1)

    def _encode(self, x: torch.Tensor, prefix_only: bool = False) -> torch.Tensor:
        """Images (B, C, S, S) -> tokens (B, T, D) before the final norm; with `prefix_only` the
        last block computes the R prefix tokens alone (B, R, D), all that cls pooling reads."""
        x = self.patch_embed(x)
        x = torch.cat([self._prefix(x.shape[0]), x], dim=1)
        x = self.pos_drop(x + self.pos_embed)
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            num_queries = self.num_prefix_tokens if prefix_only and i == last else 0
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, num_queries, use_reentrant=False)
            else:
                x = block(x, num_queries)
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) images -> (B, T, D) tokens after the final norm (before it for mean pool,
        where, as in timm, the norm is applied to the pooled vector in `forward_head`)."""
        return self.norm(self._encode(x))

    def forward_head(
        self, x: torch.Tensor, pre_logits: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """(B, T, D) tokens -> (B, K) logits, or with `pre_logits` the (B, D') representation the
        final Linear sees (for the mlp head: after its hidden Linear and tanh).

        Distilled (timm's VisionTransformerDistilled): the class token feeds `head`, the
        distillation token `head_dist`; the result is their average (`pre_logits`: the tokens'
        average), except in training with `set_distilled_training(True)`, where it is the pair
        (class logits, distillation logits) that the DeiT loss needs."""
        if self.config.distilled:
            cls, dist = x[:, 0], x[:, 1]
            if pre_logits:
                return (cls + dist) / 2
            cls, dist = self.head(cls), self.head_dist(dist)
            if self.distilled_training and self.training:
                return cls, dist
            return (cls + dist) / 2
        x = x[:, self.num_prefix_tokens :].mean(dim=1) if self.config.pool == "mean" else x[:, 0]
        x = self.pre_logits(self.fc_norm(x))
        return x if pre_logits else self.head(x)

    def forward(
        self, x: torch.Tensor, pre_logits: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits (or, with `pre_logits`, the representation few-shot probes use); equal to
        `forward_head(forward_features(x), pre_logits)`, but with cls pooling the last block
        skips the patch tokens' outputs (its MLP and projection on N tokens: ~6% of the compute
        of a 12-block model), since the head never reads them. Going through `forward` also
        keeps wrappers that hook the top-level call (DeepSpeed ZeRO-3) working."""
        x = self.norm(self._encode(x, prefix_only=self.config.pool == "cls"))
        return self.forward_head(x, pre_logits=pre_logits)

    def no_weight_decay(self) -> set[str]:
        """Parameters that AdamW must not decay (biases and norms are excluded by ndim)."""
        return {"pos_embed", "cls_token"} | ({"dist_token"} if self.config.distilled else set())

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in backward: memory for ~1/3 more compute."""
        self.grad_checkpointing = enable

    def set_distilled_training(self, enable: bool = True) -> None:
        """Distilled models: in training, return (class logits, distillation logits) instead of
        their average, for the DeiT loss (timm's switch of the same name)."""
        if enable and not self.config.distilled:
            raise ValueError("set_distilled_training: the model has no distillation token")
        self.distilled_training = enable

    def get_classifier(self) -> nn.Module | tuple[nn.Module, nn.Module]:
        """The head; for a distilled model (head, head_dist), as timm returns them."""
        return (self.head, self.head_dist) if self.config.distilled else self.head

    def swap_head(self, num_classes: int) -> None:
        """Drop the head (and the mlp head's hidden layer) for a zero-initialised Linear with
        `num_classes` outputs: the fine-tuning recipe of the paper (section 3.2). A distilled
        model gets two such heads, `head` and `head_dist`."""
        new_config = self.config.replace(
            head="linear", num_classes=num_classes, head_hidden_dim=None
        )
        weight = self.head.weight

        def zero_head() -> nn.Linear:
            head = nn.Linear(new_config.dim, num_classes, device=weight.device, dtype=weight.dtype)
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
            return head.train(self.training)

        self.pre_logits = nn.Identity()
        self.head = zero_head()
        if new_config.distilled:
            self.head_dist = zero_head()
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
        """Run at a new image size: resample the patch part of pos_embed in 2D (the class and
        distillation tokens' rows kept).

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
