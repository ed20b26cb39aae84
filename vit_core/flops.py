"""Analytic forward FLOPs of a ViT, for MFU and for comparing recipes.

Counts 2 FLOPs per multiply-add of every matmul: the patch-embedding conv, qkv, the attention
scores Q K^T and A V, the attention output projection, the two MLP Linears, and the head (with
the mlp head's hidden Linear). LayerNorm, softmax, GELU, tanh, bias adds and residual adds are
left out (under 1% for ViT-B/16), as in the 17.6 GMAC = 35.2 GFLOP usually quoted for
ViT-B/16 at 224 px. Training costs about 3x the forward (backward is ~2x).

A hybrid adds its backbone's convs (`backbone_flops`) and projects the feature map instead of
pixels; a distilled model carries one more token and a second head.

These are model FLOPs, the usual basis of MFU: `VisionTransformer.forward` with cls pooling
executes somewhat fewer, as its last block skips the outputs of the patch tokens.
"""

from __future__ import annotations

from .backbone import backbone_flops
from .config import ViTConfig


def flops(config: ViTConfig) -> int:
    """Forward FLOPs for one image."""
    c = config
    tokens = c.num_prefix_tokens + c.num_patches
    embed_in = c.in_chans if c.backbone is None else c.backbone.out_channels
    patch_embed = 2 * c.num_patches * (embed_in * c.patch_size**2) * c.dim
    if c.backbone is not None:
        patch_embed += backbone_flops(c.backbone, c.in_chans, c.img_size)
    qkv = 2 * tokens * c.dim * 3 * c.dim
    scores_and_mix = 2 * 2 * tokens * tokens * c.dim  # Q K^T and A V over all heads
    proj = 2 * tokens * c.dim * c.dim
    mlp = 2 * 2 * tokens * c.dim * c.mlp_hidden_dim
    blocks = c.depth * (qkv + scores_and_mix + proj + mlp)
    if c.head == "mlp":
        hidden = c.head_hidden_dim or c.dim
        head = 2 * c.dim * hidden + 2 * hidden * c.num_classes
    else:
        head = 2 * c.dim * c.num_classes * (2 if c.distilled else 1)
    return patch_embed + blocks + head
