"""The DeepSpeed engine the loop trains through: one object that owns model, optimizer, ZeRO
partitioning, precision, clipping and accumulation, and reads and writes sharded checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from pipelines.checkpoint.safe_load import vet_folder, weights_only_loads
from pipelines.config import StageConfig
from pipelines.distributed import DistContext
from pipelines.layout import DEEPSPEED_CONFIG_IN_CHECKPOINT
from pipelines.train.ds_config import deepspeed_config
from pipelines.train.fast_path import FastPath
from pipelines.train.optim import build_optimizer, uses_cpu_adam

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class DeepSpeedEngine:
    def __init__(
        self,
        config: StageConfig,
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

    def save(self, root: Path, tag: str) -> list[str]:
        """Write this rank's part of checkpoint `tag` under `root`; returns the names (relative
        to the tag's folder) of the files this rank wrote, for the commit marker."""
        from deepspeed.checkpoint.constants import (
            UNIVERSAL_CHECKPOINT_INFO,
            UNIVERSAL_CHECKPOINT_VERSION_KEY,
            UNIVERSAL_CHECKPOINT_VERSION_VALUE,
        )

        # Without this, ds_to_universal refuses the checkpoint (DeepSpeed issue #5822). Our
        # own state (progress, loader, RNG) is the Checkpointer's, not in DeepSpeed's files.
        state = {
            UNIVERSAL_CHECKPOINT_INFO: {
                UNIVERSAL_CHECKPOINT_VERSION_KEY: UNIVERSAL_CHECKPOINT_VERSION_VALUE
            }
        }
        folder = Path(root) / tag
        written: list[str] = []
        writer = self._engine.checkpoint_engine
        original = writer.save

        def recording_save(state_dict, path, *args, **kwargs):
            original(state_dict, path, *args, **kwargs)
            written.append(Path(path).resolve().relative_to(folder.resolve()).as_posix())

        writer.save = recording_save  # every file DeepSpeed writes goes through it
        try:
            # DeepSpeed's own `latest` is written before its barrier: ours is the commit marker.
            self._engine.save_checkpoint(str(root), tag=tag, client_state=state, save_latest=False)
        finally:
            writer.save = original
        if self._engine.global_rank == 0:
            (folder / DEEPSPEED_CONFIG_IN_CHECKPOINT).write_text(
                json.dumps(self.ds_config, indent=1)
            )
            written.append(DEEPSPEED_CONFIG_IN_CHECKPOINT)
        return written

    def load(
        self, root: Path, tag: str, *, load_optimizer: bool = True, origin: str | None = None
    ) -> None:
        # DeepSpeed unpickles what it reads: vet every file first (a one-line refusal naming the
        # file, in storage where `root/tag` is a local copy of `origin`), then force its loads
        # weights-only, so a file swapped after vetting is refused.
        vet_folder(Path(root) / tag, origin=origin)
        with weights_only_loads():
            path, _ = self._engine.load_checkpoint(
                str(root),
                tag=tag,
                load_optimizer_states=load_optimizer,
                load_lr_scheduler_states=False,
                load_module_only=not load_optimizer,
            )
        if path is None:
            raise RuntimeError(f"DeepSpeed could not load {root / tag}")
