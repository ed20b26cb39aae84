"""The ONE place the DeepSpeed JSON config is derived from ours. Nobody writes a second one."""

from __future__ import annotations

from typing import Any

from pipelines.config import JobConfig


def deepspeed_config(
    config: JobConfig, world_size: int, *, load_universal: bool = False
) -> dict[str, Any]:
    ds = config.deepspeed
    zero: dict[str, Any] = {"stage": ds.zero_stage}
    if ds.zero_stage >= 1:
        zero.update(
            {
                "contiguous_gradients": True,
                "overlap_comm": False,
                "reduce_scatter": True,
                "allgather_partitions": True,
            }
        )
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
        "zero_force_ds_cpu_optimizer": False,
        "checkpoint": {"load_universal": load_universal},
    }
    if ds.precision == "bf16":
        out["bf16"] = {"enabled": True}
    elif ds.precision == "fp16":
        out["fp16"] = {"enabled": True, "initial_scale_power": 16, "loss_scale_window": 1000}
    return out
