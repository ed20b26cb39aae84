"""The DeepSpeed engine the loop trains through: one object that owns model, optimizer, ZeRO
partitioning, precision, clipping and accumulation, and reads and writes sharded checkpoints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipelines.config import JobConfig
from pipelines.distributed import DistContext
from pipelines.train.ds_config import deepspeed_config
from pipelines.train.fast_path import FastPath
from pipelines.train.optim import build_optimizer, uses_cpu_adam

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class DeepSpeedEngine:
    def __init__(
        self,
        config: JobConfig,
        model: nn.Module,
        ctx: DistContext,
        *,
        load_universal: bool = False,
        fast: FastPath | None = None,
    ):
        import deepspeed

        self.ds_config = deepspeed_config(
            config, ctx.world_size, load_universal=load_universal, model=model
        )
        if not torch.distributed.is_initialized():
            raise RuntimeError("torch.distributed must be initialised by the launcher first")
        deepspeed.init_distributed(dist_backend=torch.distributed.get_backend())
        optimizer = build_optimizer(
            model, config.optim, on_gpu=ctx.device == "cuda", cpu_adam=uses_cpu_adam(config)
        )
        self._engine, self.optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=self.ds_config
        )
        self.input_dtype = _DTYPES[config.deepspeed.precision]
        self.device = self._engine.device
        fast = fast or FastPath.resolve(config, on_gpu=ctx.device == "cuda")
        self.autocast = fast.autocast
        if fast.compile:
            # In place (module.compile): state-dict keys stay free of `_orig_mod.`.
            self._engine.compile(compile_kwargs={"mode": fast.compile_mode})

    @property
    def module(self) -> nn.Module:
        return self._engine.module

    def train(self, mode: bool = True) -> None:
        self._engine.train(mode)

    def __call__(self, images: torch.Tensor, **kwargs) -> torch.Tensor:
        x = images.to(self.device, dtype=self.input_dtype, non_blocking=True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            return self._engine(x, **kwargs)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The pre-logits representation (few-shot probes), through the engine's forward."""
        return self(images, pre_logits=True).float()

    def backward(self, loss: torch.Tensor) -> None:
        self._engine.backward(loss)

    def step(self) -> None:
        self._engine.step()

    def grad_norm(self) -> float | None:
        norm = self._engine.get_global_grad_norm()
        if norm is None:
            return None
        return float(norm.item() if isinstance(norm, torch.Tensor) else norm)

    def save(self, root: Path, tag: str, client_state: dict[str, Any]) -> None:
        from deepspeed.checkpoint.constants import (
            UNIVERSAL_CHECKPOINT_INFO,
            UNIVERSAL_CHECKPOINT_VERSION_KEY,
            UNIVERSAL_CHECKPOINT_VERSION_VALUE,
        )

        # Without this, ds_to_universal refuses the checkpoint (DeepSpeed issue #5822).
        state = dict(client_state)
        state[UNIVERSAL_CHECKPOINT_INFO] = {
            UNIVERSAL_CHECKPOINT_VERSION_KEY: UNIVERSAL_CHECKPOINT_VERSION_VALUE
        }
        # DeepSpeed's own `latest` is written before its barrier: ours is the commit marker.
        self._engine.save_checkpoint(str(root), tag=tag, client_state=state, save_latest=False)
        if self._engine.global_rank == 0:
            (root / tag / "ds_config.json").write_text(json.dumps(self.ds_config, indent=1))

    def load(self, root: Path, tag: str, *, load_optimizer: bool = True) -> dict[str, Any]:
        path, client_state = self._engine.load_checkpoint(
            str(root),
            tag=tag,
            load_optimizer_states=load_optimizer,
            load_lr_scheduler_states=False,
            load_module_only=not load_optimizer,
        )
        if path is None:
            raise RuntimeError(f"DeepSpeed could not load {root / tag}")
        return client_state or {}
