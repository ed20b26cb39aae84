"""`distill:` — DeiT's distillation through the distillation token (Touvron et al. 2021,
section 5): the student's distillation head learns from a teacher's outputs on the same
augmented (mixed) batch, its class head from the labels. Absent: no teacher."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipelines.section import Section


class DistillSection(Section):
    teacher: str = Field(
        min_length=1,
        description="a vitpipe export dir, a Hugging Face ViT/DeiT dir, or (with timm_model) the "
        "teacher's local checkpoint file (safetensors, or a torch file of tensors)",
    )
    timm_model: str | None = Field(
        None, min_length=1, description="a timm model name (needs vitpipe[timm]); None: not timm"
    )
    kind: Literal["hard", "soft"] = Field(
        "hard", description="hard: CE on the teacher's argmax (DeiT's best); soft: KL at tau"
    )
    alpha: float = Field(0.5, ge=0, le=1, allow_inf_nan=False, description="weight of the teacher")
    tau: float = Field(1.0, gt=0, allow_inf_nan=False, description="soft: temperature")
