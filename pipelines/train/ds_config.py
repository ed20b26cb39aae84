"""The ONE place the DeepSpeed JSON config is derived from ours. Nobody writes a second one."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

import vit_core
from pipelines.config import StageConfig
from pipelines.train.optim import uses_cpu_adam

# DeepSpeed's own bucket default (5e8 elements) is larger than ViT-B/L/H: the first reduction
# would wait for the whole backward pass. Eight buckets per model let the reduction of the last
# layers' gradients run while the earlier layers' backward computes; the floor keeps a bucket
# large enough (8 MiB in bf16) for NCCL to reach its bus bandwidth, as DDP's 25 MiB buckets do.
BUCKETS_PER_MODEL = 8
MIN_BUCKET = 2**22
MAX_BUCKET = 500_000_000


def deepspeed_config(
    config: StageConfig,
    world_size: int,
    *,
    load_universal: bool = False,
    model: nn.Module | None = None,
) -> dict[str, Any]:
    """`model`: the module to be trained, which sizes the buckets; None: the `model:` section."""
    ds = config.deepspeed
    zero: dict[str, Any] = {"stage": ds.zero_stage}
    if ds.zero_stage >= 1:
        num_params, dim = _model_size(config, model)
        bucket = bucket_elements(num_params)
        zero.update(
            {
                "contiguous_gradients": True,
                "overlap_comm": overlap_comm(config),
                "reduce_scatter": True,
                "allgather_partitions": True,
                "reduce_bucket_size": bucket,
                "allgather_bucket_size": bucket,
            }
        )
        if ds.zero_stage == 3:
            # Biases and norms (about `dim` elements each) stay whole on every rank: gathering
            # them costs a collective each for a few KiB.
            zero["stage3_prefetch_bucket_size"] = bucket
            zero["stage3_param_persistence_threshold"] = 10 * dim
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": config.cluster.use_gpu}
    if ds.offload_param:
        zero["offload_param"] = {"device": "cpu", "pin_memory": config.cluster.use_gpu}
    out: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": config.train.micro_batch_size,
        "gradient_accumulation_steps": config.grad_accum_steps(world_size),
        "train_batch_size": config.train.global_batch_size,
        "zero_optimization": zero,
        "gradient_clipping": config.optim.grad_clip or 0.0,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        "zero_allow_untested_optimizer": True,
        # Offloaded Adam/AdamW must be DeepSpeed's CPUAdam (optim.build_optimizer makes it);
        # offloaded SGD stays torch's, which DeepSpeed only allows with this off.
        "zero_force_ds_cpu_optimizer": uses_cpu_adam(config),
        "checkpoint": {"load_universal": load_universal},
    }
    if ds.precision == "bf16":
        out["bf16"] = {"enabled": True}
        if ds.zero_stage >= 1 and ds.grad_accum_dtype == "fp32":
            # bf16 keeps 8 bits of mantissa: summing micro-batches, and 32 ranks' gradients, in
            # it loses the small ones. DeepSpeed refuses this at ZeRO-0 (NotImplementedError)
            # and at ZeRO-1 without offload trains through BF16_Optimizer instead of the ZeRO
            # optimizer (another checkpoint layout: see bf16_layout()).
            out["data_types"] = {"grad_accum_dtype": "fp32"}
            out["communication_data_type"] = "fp32"
    elif ds.precision == "fp16":
        out["fp16"] = {"enabled": True, "initial_scale_power": 16, "loss_scale_window": 1000}
    return out


def overlap_comm(config: StageConfig) -> bool:
    """Gradient reduction on DeepSpeed's side stream, overlapping the backward pass. DeepSpeed
    turns it on by default for ZeRO-3 only; for ZeRO-1 that means the whole reduction runs on
    the compute stream after the backward. On a GPU it pays at every stage (its cost is ~4.5x a
    bucket of extra memory); on CPU (gloo) there is no second stream to overlap on."""
    ds = config.deepspeed
    if ds.overlap_comm is not None:
        return ds.overlap_comm and ds.zero_stage >= 1
    return config.cluster.use_gpu and ds.zero_stage >= 1


def bucket_elements(num_params: int) -> int:
    """Reduce/all-gather bucket size for a model of `num_params`: BUCKETS_PER_MODEL buckets,
    at least MIN_BUCKET and at most DeepSpeed's default, a multiple of 2**20."""
    size = min(max(num_params // BUCKETS_PER_MODEL, MIN_BUCKET), MAX_BUCKET)
    return -(-size // 2**20) * 2**20


def bf16_layout(ds_config: dict[str, Any]) -> str:
    """Which DeepSpeed optimizer a config trains (and checkpoints) through: "bf16_optimizer"
    (bf16 with fp32 gradient accumulation at ZeRO-1 without offload), "zero" or "plain"."""
    zero = ds_config.get("zero_optimization", {})
    stage = int(zero.get("stage", 0))
    fp32_accum = ds_config.get("data_types", {}).get("grad_accum_dtype") == "fp32"
    bf16 = ds_config.get("bf16", {}).get("enabled", False)
    if bf16 and fp32_accum and stage == 1 and "offload_optimizer" not in zero:
        return "bf16_optimizer"
    return "zero" if stage >= 1 else "plain"


def _model_size(config: StageConfig, model: nn.Module | None) -> tuple[int, int]:
    """(parameters, width) of the model, or of the `model:` section's when none is given."""
    if model is None:
        with torch.device("meta"):
            model = vit_core.VisionTransformer(config.model.vit_config(1000))
    dim = getattr(getattr(model, "config", None), "dim", 1024)
    return sum(p.numel() for p in model.parameters()), int(dim)
