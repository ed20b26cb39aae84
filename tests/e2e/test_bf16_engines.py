"""bf16 through real DeepSpeed 0.19.8 engines on the CPU (its CPU accelerator runs bf16): fp32
gradient accumulation and reduction at ZeRO 1-3 (ZeRO-1 then trains through BF16_Optimizer),
checkpoints written with bf16 accumulation (every bf16 checkpoint before this change) resume
into the new layout and continue as they would have, exports of bf16 ZeRO-0 checkpoints take the
fp32 master weights, and offloaded AdamW steps through DeepSpeed's CPUAdam."""

from __future__ import annotations

import pytest
import torch

import vit_core
from pipelines.checkpoint import files
from pipelines.checkpoint import marker as markers
from pipelines.checkpoint.export import consolidated_state_dict
from pipelines.checkpoint.rank_state import rng_state, write_rank_state
from pipelines.config import config_from_dict
from pipelines.distributed import DistContext
from pipelines.storage import locate
from pipelines.train.engine import DeepSpeedEngine

pytestmark = pytest.mark.slow
MODEL = {"img_size": 32, "patch_size": 8, "dim": 64, "depth": 2, "num_heads": 2, "num_classes": 10}


@pytest.fixture(scope="module")
def ctx(process_group) -> DistContext:
    return process_group


def _engine(ctx, stage: int, precision: str = "bf16", **deepspeed) -> DeepSpeedEngine:
    config = config_from_dict(
        {
            "model": {"name": "vit_tiny_patch16", **MODEL},
            "optim": deepspeed.pop("optim", {}),
            "deepspeed": {"zero_stage": stage, "precision": precision, **deepspeed},
            "train": {"micro_batch_size": 4, "global_batch_size": 4, "compile": False},
            "cluster": {"num_workers": 1},
            "tracking": {"enabled": False},
        }
    )
    torch.manual_seed(0)
    return DeepSpeedEngine(config, vit_core.create_model("vit_tiny_patch16", **MODEL), ctx)


def _steps(engine: DeepSpeedEngine, seed: int, n: int = 2) -> list[float]:
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(n):
        x = torch.randn(4, 3, 32, 32, generator=gen)
        y = torch.randint(0, 10, (4,), generator=gen)
        loss = torch.nn.functional.cross_entropy(engine(x).float(), y)
        engine.backward(loss)
        engine.step()
        losses.append(float(loss))
    return losses


def test_zero1_bf16_accumulates_in_fp32_and_resumes_checkpoints_written_before(ctx, tmp_path):
    old = _engine(ctx, 1, grad_accum_dtype="bf16")  # what every bf16 run wrote until now
    assert type(old._engine.optimizer).__name__ == "DeepSpeedZeroOptimizer"
    _steps(old, seed=1)
    old.save(tmp_path, "old")
    expected = _steps(old, seed=2)  # the run as it would have continued

    new = _engine(ctx, 1)  # the default now: fp32 accumulation and reduction
    assert type(new._engine.optimizer).__name__ == "BF16_Optimizer"
    assert new._engine.communication_data_type == torch.float32
    new.load(tmp_path, "old")
    assert _steps(new, seed=2) == expected  # same fp32 masters and Adam moments, bit for bit


def test_zero2_keeps_its_optimizer_and_layout_with_fp32_accumulation(ctx, tmp_path):
    """ZeRO-3 behaves the same (checked once by hand; its engines are the slowest to build)."""
    stage = 2
    old = _engine(ctx, stage, grad_accum_dtype="bf16")
    _steps(old, seed=1)
    old.save(tmp_path, "old")
    expected = _steps(old, seed=2)
    new = _engine(ctx, stage)
    assert type(new._engine.optimizer).__name__ == type(old._engine.optimizer).__name__
    assert new._engine.get_data_types() == (torch.bfloat16, torch.float32)
    new.load(tmp_path, "old")
    assert _steps(new, seed=2) == expected


def test_zero0_bf16_export_takes_the_fp32_master_weights(ctx, tmp_path):
    engine = _engine(ctx, 0)
    _steps(engine, seed=1, n=3)
    names = {id(p): n for n, p in engine.module.named_parameters()}
    inner = engine._engine.optimizer  # DeepSpeed's bf16 wrapper keeps the fp32 masters
    masters = {
        names[id(p)]: master
        for low, fp32 in zip(inner.fp16_groups, inner.fp32_groups, strict=True)
        for p, master in zip(low, fp32, strict=True)
    }
    meta = {"zero_stage": 0, "vit_config": engine.module.config.to_dict()}
    folder = tmp_path / "step_0000003"
    names = engine.save(tmp_path, folder.name)
    names += [p.name for p in write_rank_state(folder, 0, {}, rng_state())]
    files.commit(locate(str(folder)), 3, [markers.report(folder, names)], meta)
    exported = consolidated_state_dict(files.open_checkpoint(folder))
    assert set(masters) == set(exported)
    for name, master in masters.items():
        assert exported[name].dtype == torch.float32
        assert torch.equal(exported[name], master), name  # not the bf16 weight made float
    assert any(not torch.equal(m, m.bfloat16().float()) for m in masters.values())


def test_offloaded_adamw_steps_through_deepspeeds_cpu_adam(ctx):
    """CPUAdam is a C++ op DeepSpeed JIT-compiles on first use (cached per machine). Offloaded
    SGD stays torch's (test_ds_config: DeepSpeed is told not to insist on its CPU optimizer)."""
    engine = _engine(ctx, 1, "fp32", offload_optimizer=True, optim={"name": "adamw"})
    assert type(engine._engine.basic_optimizer).__name__ == "DeepSpeedCPUAdam"
    before = [p.detach().clone() for p in engine.module.parameters()]
    losses = _steps(engine, seed=1)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert any(
        not torch.equal(a, b) for a, b in zip(before, engine.module.parameters(), strict=True)
    )


def test_deepspeed_refuses_fp32_accumulation_with_bf16_at_zero0(ctx):
    """Why deepspeed_config leaves data_types out at ZeRO-0 (DeepSpeed 0.19.8)."""
    import deepspeed

    from pipelines.train.ds_config import deepspeed_config

    config = config_from_dict(
        {
            "model": {"name": "vit_tiny_patch16", **MODEL},
            "deepspeed": {"zero_stage": 0, "precision": "bf16"},
            "train": {"micro_batch_size": 4, "global_batch_size": 4},
            "cluster": {"num_workers": 1},
            "tracking": {"enabled": False},
        }
    )
    ds = deepspeed_config(config, 1)
    assert "data_types" not in ds
    ds["data_types"] = {"grad_accum_dtype": "fp32"}
    model = vit_core.create_model("vit_tiny_patch16", **MODEL)
    with pytest.raises(NotImplementedError, match="unsupported mix"):
        deepspeed.initialize(
            model=model, optimizer=torch.optim.AdamW(model.parameters()), config=ds
        )
