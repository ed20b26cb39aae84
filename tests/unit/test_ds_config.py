"""The DeepSpeed JSON derived from our config: gradient reduction overlapped with the backward
on GPUs, buckets scaled to the model, fp32 gradient accumulation and reduction under bf16, and
DeepSpeed's CPUAdam for offloaded Adam/AdamW."""

from __future__ import annotations

import pytest

from pipelines.config import config_from_dict
from pipelines.errors import ConfigError
from pipelines.train.ds_config import (
    MIN_BUCKET,
    bf16_layout,
    bucket_elements,
    deepspeed_config,
)
from pipelines.train.optim import uses_cpu_adam

TINY = {"name": "vit_tiny_patch16", "img_size": 32, "patch_size": 4, "dim": 64, "num_heads": 2}


def _ds(model=None, **sections) -> dict:
    raw = {
        "model": model or TINY,
        "train": {"micro_batch_size": 8, "global_batch_size": 16},
        "cluster": {"num_workers": 2},
        "tracking": {"enabled": False},
    }
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return deepspeed_config(config_from_dict(raw), 2)


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_gpu_runs_overlap_the_reduction_with_backward_at_every_zero_stage(stage):
    zero = _ds(deepspeed={"zero_stage": stage}, cluster={"use_gpu": True})["zero_optimization"]
    assert zero["overlap_comm"] is True  # was False for every stage
    cpu = _ds(deepspeed={"zero_stage": stage})["zero_optimization"]
    assert cpu["overlap_comm"] is False  # gloo on CPU: nothing to overlap on
    off = _ds(deepspeed={"zero_stage": stage, "overlap_comm": False}, cluster={"use_gpu": True})
    assert off["zero_optimization"]["overlap_comm"] is False
    on = _ds(deepspeed={"zero_stage": stage, "overlap_comm": True})
    assert on["zero_optimization"]["overlap_comm"] is True


def test_zero0_has_no_zero_options():
    assert _ds(deepspeed={"zero_stage": 0}, cluster={"use_gpu": True})["zero_optimization"] == {
        "stage": 0
    }


def test_buckets_scale_with_the_model():
    base = {"name": "vit_base_patch16", "img_size": 224}
    zero = _ds(base, deepspeed={"zero_stage": 2}, cluster={"use_gpu": True})["zero_optimization"]
    # ViT-B/16 with a 1000-class MLP head: ~87M parameters, eight buckets of ~11M elements
    assert 10 * 2**20 <= zero["reduce_bucket_size"] <= 12 * 2**20
    assert zero["allgather_bucket_size"] == zero["reduce_bucket_size"]
    assert zero["reduce_bucket_size"] % 2**20 == 0
    tiny = _ds(deepspeed={"zero_stage": 2})["zero_optimization"]
    assert tiny["reduce_bucket_size"] == MIN_BUCKET
    large = {"name": "vit_large_patch16", "img_size": 224}
    z3 = _ds(large, deepspeed={"zero_stage": 3}, cluster={"use_gpu": True})["zero_optimization"]
    assert (
        z3["stage3_prefetch_bucket_size"] == z3["reduce_bucket_size"] > zero["reduce_bucket_size"]
    )
    assert z3["stage3_param_persistence_threshold"] == 10 * 1024
    assert bucket_elements(10**12) == 500_000_000 // 2**20 * 2**20 + 2**20


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_bf16_accumulates_and_reduces_gradients_in_fp32_at_zero_1_to_3(stage):
    out = _ds(deepspeed={"zero_stage": stage, "precision": "bf16"})
    assert out["data_types"] == {"grad_accum_dtype": "fp32"}
    assert out["communication_data_type"] == "fp32"
    switched = _ds(deepspeed={"zero_stage": stage, "precision": "bf16", "grad_accum_dtype": "bf16"})
    assert "data_types" not in switched and "communication_data_type" not in switched


def test_zero0_and_other_precisions_get_no_data_types():
    # DeepSpeed 0.19.8 raises NotImplementedError for bf16 + fp32 accumulation at ZeRO-0.
    assert "data_types" not in _ds(deepspeed={"zero_stage": 0, "precision": "bf16"})
    assert "data_types" not in _ds(deepspeed={"zero_stage": 2, "precision": "fp16"})
    assert "data_types" not in _ds(deepspeed={"zero_stage": 2, "precision": "fp32"})


def test_bf16_layout_names_the_optimizer_deepspeed_will_build():
    assert bf16_layout(_ds(deepspeed={"zero_stage": 1, "precision": "bf16"})) == "bf16_optimizer"
    offload = {"zero_stage": 1, "precision": "bf16", "offload_optimizer": True}
    assert bf16_layout(_ds(deepspeed=offload)) == "zero"
    assert bf16_layout(_ds(deepspeed={"zero_stage": 2, "precision": "bf16"})) == "zero"
    assert bf16_layout(_ds(deepspeed={"zero_stage": 0, "precision": "bf16"})) == "plain"


@pytest.mark.parametrize(("name", "cpu_adam"), [("adamw", True), ("adam", True), ("sgd", False)])
def test_offloaded_adam_uses_deepspeeds_cpu_adam_and_sgd_stays_torchs(name, cpu_adam):
    sections = {"deepspeed": {"zero_stage": 2, "offload_optimizer": True}, "optim": {"name": name}}
    assert _ds(**sections)["zero_force_ds_cpu_optimizer"] is cpu_adam
    raw = {
        "deepspeed": sections["deepspeed"],
        "optim": {"name": name},
        "tracking": {"enabled": False},
    }
    assert uses_cpu_adam(config_from_dict(raw)) is cpu_adam
    assert _ds(optim={"name": name})["zero_force_ds_cpu_optimizer"] is False  # no offload


def test_a_bad_grad_accum_dtype_names_the_field():
    with pytest.raises(ConfigError, match="deepspeed.grad_accum_dtype"):
        config_from_dict({"deepspeed": {"grad_accum_dtype": "fp16"}})
