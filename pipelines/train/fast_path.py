"""The GPU fast path, resolved once from the config: what is on, with defaults that switch it on
where it pays (a GPU) and off where it only costs (CPU tests), each overridable."""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.config import StageConfig


@dataclass(frozen=True, kw_only=True)
class FastPath:
    compile: bool
    compile_mode: str
    autocast: bool
    prefetch: bool

    @classmethod
    def resolve(cls, config: StageConfig, *, on_gpu: bool) -> FastPath:
        train = config.train
        fp32_weights = config.deepspeed.precision == "fp32"
        return cls(
            compile=on_gpu if train.compile is None else train.compile,
            compile_mode=train.compile_mode,
            autocast=(on_gpu and fp32_weights) if train.autocast is None else train.autocast,
            prefetch=on_gpu if train.prefetch_to_device is None else train.prefetch_to_device,
        )

    def describe(self) -> str:
        on = [name for name in ("compile", "autocast", "prefetch") if getattr(self, name)]
        return "fast path: " + (", ".join(on) if on else "off")
