"""Every YAML we ship under configs/ validates, so a user copying one starts from a working file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipelines.config import load_config
from pipelines.config.loader import read_yaml
from pipelines.config.pipeline import is_pipeline, load_pipeline
from vit_core import create_model, flops

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SHIPPED = sorted(CONFIGS.rglob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_shipped_config_validates(path: Path) -> None:
    if is_pipeline(read_yaml(path)):
        _, stages = load_pipeline(path)
        jobs = list(stages.values())
    else:
        jobs = [load_config(path)]
    for job in jobs:
        # The global batch must split over the configured workers (checked at launch otherwise).
        assert job.grad_accum_steps(job.cluster.num_workers) >= 1


@pytest.mark.parametrize(
    ("recipe", "preset", "params_m"),
    [
        ("vit_s16_i1k", "vit_small_patch16", 22.0),
        ("vit_b16_i21k", "vit_base_patch16", 86.4),
        ("vit_l16_i21k", "vit_large_patch16", 304.0),
    ],
)
def test_pretrain_recipes_build_the_paper_models(recipe: str, preset: str, params_m: float) -> None:
    job = load_config(CONFIGS / "pretrain" / f"{recipe}.yaml")
    assert job.model.name == preset and job.model.img_size == 224 and job.model.head == "mlp"
    assert job.cluster.use_gpu and job.optim.grad_clip == 1.0
    assert job.schedule.warmup_steps == 10_000 < job.train.total_steps
    with torch.device("meta"):  # shapes only: no memory for 304M parameters
        model = create_model(preset, img_size=224, num_classes=1000)
    count = sum(p.numel() for p in model.parameters()) / 1e6
    assert count == pytest.approx(params_m, rel=0.03)
    assert flops(model.config) > 0
