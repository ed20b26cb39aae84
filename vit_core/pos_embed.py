"""2D resampling of learned position embeddings, for a new image size or patch grid.

Same result as timm's `resample_abs_pos_embed` (float32 interpolation, align_corners=False,
antialias=True), so checkpoints resized here and in timm agree.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MODES = ("bicubic", "bilinear")


def _pair(grid: int | tuple[int, int]) -> tuple[int, int]:
    return (grid, grid) if isinstance(grid, int) else (int(grid[0]), int(grid[1]))


def resample_pos_embed(
    pos_embed: torch.Tensor,
    new_grid: int | tuple[int, int],
    old_grid: int | tuple[int, int],
    num_prefix_tokens: int = 1,
    mode: str = "bicubic",
) -> torch.Tensor:
    """Resample (1, prefix + gh*gw, D) position embeddings to a new grid; prefix rows are kept.

    The patch rows are a (gh, gw) image with D channels, so they are interpolated in 2D rather
    than along the flat sequence. Equal grids return the input unchanged (no interpolation).
    """
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: allowed values are {list(MODES)}")
    new_hw, old_hw = _pair(new_grid), _pair(old_grid)
    num_old = pos_embed.shape[1] - num_prefix_tokens
    if pos_embed.ndim != 3 or num_old != old_hw[0] * old_hw[1]:
        raise ValueError(
            f"pos_embed of shape {tuple(pos_embed.shape)} does not hold {num_prefix_tokens} prefix "
            f"tokens plus an old grid of {old_hw[0]}x{old_hw[1]} patches"
        )
    if new_hw == old_hw:
        return pos_embed
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    dim = pos_embed.shape[-1]
    # (1, gh*gw, D) -> (1, D, gh, gw) -> interpolate -> (1, gh'*gw', D)
    grid = grid.float().reshape(1, old_hw[0], old_hw[1], dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=new_hw, mode=mode, align_corners=False, antialias=True)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_hw[0] * new_hw[1], dim).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1)
