"""`optim:`, `schedule:`, `deepspeed:`, `train:` and `checkpoint:` — how the model is trained."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from pipelines.config.model import MAX_IMG_SIZE
from pipelines.section import Section, Seed

MAX_GLOBAL_BATCH = 2**20  # samples per optimizer step: 16x the largest ViT recipes


class OptimSection(Section):
    name: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    betas: list[float] = Field([0.9, 0.999], min_length=2, max_length=2)

    @model_validator(mode="after")
    def _check_betas(self) -> OptimSection:
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"optim.betas={self.betas} must each be in [0, 1)")
        return self

    eps: float = Field(1e-8, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    grad_clip: float | None = Field(1.0, gt=0, description="None: no clipping")
    layer_decay: float | None = Field(None, gt=0, le=1, description="layer-wise lr decay")
    fused: bool | None = Field(None, description="None: fused kernels when on a GPU")


class ScheduleSection(Section):
    warmup_steps: int = Field(0, ge=0)
    decay: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = Field(0.0, ge=0, le=1)


class DeepSpeedSection(Section):
    zero_stage: int = Field(2, ge=0, le=3)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    offload_optimizer: bool = False
    offload_param: bool = False
    overlap_comm: bool | None = Field(
        None, description="overlap gradient reduction with backward; None: on for ZeRO 1-3 on GPUs"
    )
    grad_accum_dtype: Literal["fp32", "bf16"] = Field(
        "fp32", description="bf16 at ZeRO 1-3: accumulate and reduce gradients in this dtype"
    )

    @model_validator(mode="after")
    def _check_offload(self) -> DeepSpeedSection:
        if self.offload_optimizer and self.zero_stage == 0:
            raise ValueError("deepspeed.offload_optimizer needs deepspeed.zero_stage >= 1")
        if self.offload_param and self.zero_stage != 3:
            raise ValueError("deepspeed.offload_param needs deepspeed.zero_stage = 3")
        return self


class TrainSection(Section):
    total_steps: int = Field(1000, ge=1, le=10**9)
    global_batch_size: int = Field(256, ge=1, le=MAX_GLOBAL_BATCH)
    micro_batch_size: int = Field(32, ge=1, le=65536)
    grad_accum_steps: int | None = Field(None, ge=1, le=65536, description="None: derived")
    seed: Seed = 0
    loss: Literal["softmax_ce", "sigmoid_bce"] = "softmax_ce"
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    log_every_n_steps: int = Field(10, ge=1)
    eval_every_n_steps: int | None = Field(None, ge=1, description="None: only at the end")
    eval_max_batches: int | None = Field(None, ge=1, description="None: the whole val split")
    compile: bool | None = Field(None, description="torch.compile the model; None: on a GPU")
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = "default"
    autocast: bool | None = Field(
        None, description="bf16 autocast over fp32 weights; None: on a GPU when precision is fp32"
    )
    prefetch_to_device: bool | None = Field(
        None, description="copy the next batch to the device during this step; None: on a GPU"
    )
    peak_tflops: float | None = Field(None, gt=0, description="None: measured at start-up")
    fewshot_every_n_steps: int | None = Field(None, ge=1)
    fewshot_shots: list[Annotated[int, Field(ge=1, le=100_000)]] = Field([5, 10], min_length=1)
    record_sample_keys: bool = Field(
        False, description="write every consumed sample key to <run dir>/sample_keys/ (audits)"
    )


class CheckpointSection(Section):
    every_n_steps: int | None = Field(None, ge=1, description="None: only at the end")
    keep_last: int = Field(2, ge=2, le=10_000)


class FinetuneSection(Section):
    """Fine-tuning: the architecture and weights come from `--from`; the `model:` section is
    not used. Defaults follow big_vision's transfer recipe (SGD momentum 0.9, no weight decay,
    clipping at 1.0, warmup then cosine): set those in `optim:`/`schedule:`."""

    mode: Literal["full", "linear_probe"] = "full"
    img_size: int | None = Field(
        None, ge=8, le=MAX_IMG_SIZE, description="None: the source model's size"
    )
    interpolation: Literal["bicubic", "bilinear"] = "bicubic"
    register_model: bool = Field(True, description="register the fine-tuned model in MLflow")
