"""The fp32 weights of a bf16/fp16 ZeRO-0 checkpoint.

At ZeRO-0 DeepSpeed trains bf16 (fp16) module weights and keeps their fp32 master copies in its
mixed-precision optimizer only, saved under the model-states file's `optimizer` entry:
`fp32_groups` (one tensor per parameter, FP16_UnfusedOptimizer, what torch optimizers get) or
`fp32_groups_flat` (one flat tensor per group, FP16_Optimizer with DeepSpeed's FusedAdam). The
groups hold the trainable parameters in `named_parameters()` order within each group, without
names; each master copy rounds exactly to its saved bf16 weight, which is how a name is found
for it. (ZeRO-1/2/3 checkpoints carry names and go through DeepSpeed's `zero_to_fp32`.)
"""

from __future__ import annotations

from typing import Any

import torch

from pipelines.errors import CheckpointError


def fp32_master_weights(saved: dict[str, Any]) -> dict[str, torch.Tensor]:
    """`saved`: a loaded `mp_rank_00_model_states.pt`. Its `module` weights, each trained
    parameter replaced by its fp32 master copy; buffers and frozen parameters as saved. An fp32
    checkpoint, or one saved without optimizer state, comes back as saved."""
    module: dict[str, torch.Tensor] = saved["module"]
    optimizer = saved.get("optimizer") or {}
    groups = optimizer.get("fp32_groups_flat")
    if groups is None and optimizer.get("fp32_groups") is not None:
        groups = [torch.cat([t.flatten() for t in group]) for group in optimizer["fp32_groups"]]
    low = [n for n, t in module.items() if t.dtype in (torch.bfloat16, torch.float16)]
    if groups is None or not low:
        return module
    buffers = set(saved.get("buffer_names") or ())
    names = [n for n in low if n not in buffers]
    out, taken = dict(module), set()
    for index, flat in enumerate(groups):
        offset, cursor = 0, 0
        while offset < flat.numel():
            cursor = _next_match(flat, offset, names, cursor, module, taken)
            if cursor is None:
                raise CheckpointError(
                    f"fp32 master group {index} of the ZeRO-0 checkpoint does not match its "
                    f"module weights at element {offset}; the checkpoint is inconsistent"
                )
            name = names[cursor]
            size = module[name].numel()
            out[name] = flat[offset : offset + size].view(module[name].shape).clone()
            taken.add(name)
            offset += size
    return out


def _next_match(
    flat: torch.Tensor,
    offset: int,
    names: list[str],
    start: int,
    module: dict[str, torch.Tensor],
    taken: set[str],
) -> int | None:
    """The first untaken name at or after `start` whose weight is the rounding of the fp32
    elements at `offset` (parameters of other groups are skipped over)."""
    for i in range(start, len(names)):
        weight = module[names[i]]
        if names[i] in taken or offset + weight.numel() > flat.numel():
            continue
        chunk = flat[offset : offset + weight.numel()]
        if torch.equal(chunk.to(weight.dtype), weight.flatten()):
            return i
    return None
