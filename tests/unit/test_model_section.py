"""The `model:` section is vit_core's ViTConfig: every name vit_core accepts (image-size suffix
honoured), vit_core's errors named as config keys, the pipeline's own defaults (mlp head, the
manifest's class count, sigmoid head bias), and the architecture comparison resume uses."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

import vit_core
from pipelines.config import config_from_dict
from pipelines.config.model import BackboneSection, ModelSection, architecture_changes
from pipelines.errors import ConfigError

FIXTURE = Path(__file__).parents[1] / "fixtures" / "ckpt_v0_1" / "checkpoints" / "step_0000004"
TINY = {"name": "vit_tiny_patch16", "img_size": 32, "patch_size": 4, "dim": 64, "depth": 2,
        "num_heads": 2}  # fmt: skip


def problems(model: dict) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config_from_dict({"model": model})
    return info.value.problems


@pytest.mark.parametrize(
    ("model", "img_size", "head"),
    [
        ({"name": "vit_base_patch16_384"}, 384, "mlp"),
        ({"name": "vit_base_patch16_384", "img_size": 224}, 224, "mlp"),
        ({"name": "vit_base_r50_s16_384"}, 384, "mlp"),
        ({"name": "vit_tiny_r_s16_p8_224"}, 224, "mlp"),
        ({"name": "deit_small_patch16_224", "head": "linear"}, 224, "linear"),
        ({"name": "deit_base_distilled_patch16_384"}, 384, "linear"),
        ({"name": "vit_small_patch16"}, 224, "mlp"),
    ],
)
def test_every_vit_core_name_is_accepted(model: dict, img_size: int, head: str) -> None:
    section = config_from_dict({"model": model}).model
    built = section.vit_config(7)
    assert (built.img_size, built.head, built.num_classes) == (img_size, head, 7)
    reference = vit_core.model_config(model["name"], num_classes=7, head=head)
    assert built == reference.replace(img_size=img_size)


def test_the_section_builds_what_vit_core_builds() -> None:
    section = ModelSection(**TINY, drop_path_rate=0.1, num_classes=None)
    assert section.vit_config(10) == vit_core.model_config(
        "vit_tiny_patch16", img_size=32, patch_size=4, dim=64, depth=2, num_heads=2,
        drop_path_rate=0.1, head="mlp", num_classes=10,
    )  # fmt: skip
    assert ModelSection(**TINY, num_classes=3).vit_config(10).num_classes == 3
    sigmoid = section.vit_config(10, loss="sigmoid_bce")
    assert sigmoid.head_bias_init == -10.0 and section.vit_config(10).head_bias_init == 0.0
    assert section.model_dump()["grad_checkpointing"] is False


def test_a_tiny_hybrid_from_backbone_overrides() -> None:
    raw = {**TINY, "name": "vit_small_r26_s32", "patch_size": 1,
           "backbone": {"layers": [1, 1], "widths": [32, 64], "stem_width": 16, "num_groups": 8}}  # fmt: skip
    built = config_from_dict({"model": raw}).model.vit_config(10)
    assert built.backbone == vit_core.BackboneConfig(
        layers=(1, 1), widths=(32, 64), stem_width=16, num_groups=8
    )
    assert (built.grid_size, built.head, built.dim) == (4, "mlp", 64)
    assert vit_core.describe_model(built).startswith("custom hybrid ViT (ResNet-V2 stem 16")


def test_a_tiny_distilled_model_takes_linear_heads() -> None:
    built = ModelSection(**{**TINY, "name": "deit_tiny_distilled_patch16"}).vit_config(10)
    assert built.distilled and built.head == "linear"
    plain = ModelSection(**TINY, distilled=True).vit_config(10)
    assert plain.distilled and plain.head == "linear"


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ({"name": "vit_giant_patch16"}, "model.name='vit_giant_patch16': unknown model"),
        ({"name": "vit_bsae_patch16"}, "did you mean 'vit_base_patch16'?"),
        ({"pool": "avg"}, "model.pool='avg': allowed values are ['cls', 'mean']"),
        ({"head": "conv"}, "model.head='conv': allowed values are ['mlp', 'linear']"),
        ({"dim": 100}, "model.dim=100: must be divisible by num_heads=12"),
        ({"num_classes": 0}, "model.num_classes=0: must be >= 1"),
        ({"drop_path_rate": 1.0}, "model.drop_path_rate=1.0: must be in [0, 1)"),
        ({"img_size": 30}, "model.img_size=30: must be a multiple of patch_size=16"),
        (
            {"name": "vit_base_r50_s16", "img_size": 200},
            "model.img_size=200: must be a multiple of 16",
        ),
        (
            {"name": "vit_base_r50_s16", "backbone": {"widths": [64]}},
            "model.backbone.widths=[64]: needs one width per stage",
        ),
        ({"name": "deit_tiny_distilled_patch16", "head": "mlp"}, "two linear heads"),
        ({"mlp_ratio": "4"}, "model.mlp_ratio: expected a number, got the string '4'"),
    ],
)
def test_errors_are_one_line_naming_the_model_key(model: dict, expected: str) -> None:
    found = problems(model)
    assert len(found) == 1 and expected in found[0], found
    assert "\n" not in found[0] and "ViTConfig" not in found[0]


def test_grad_checkpointing_is_not_the_architecture() -> None:
    saved = json.loads((FIXTURE / "COMMITTED.json").read_text())["meta"]["vit_config"]
    job = {**TINY, "head": "mlp", "drop_path_rate": 0.1}
    same = ModelSection(**job, grad_checkpointing=True).vit_config(10)
    assert architecture_changes(saved, same) == []  # the 0.1 fixture's model, rebuilt today
    deeper = ModelSection(**{**job, "depth": 3}).vit_config(10)
    assert architecture_changes(saved, deeper) == ["model.depth: 2 -> 3"]
    hybrid = ModelSection(**{**job, "backbone": {"layers": [], "stem_width": 16, "num_groups": 8}})
    assert architecture_changes(saved, hybrid.vit_config(10))[0].startswith("model.backbone: None")
    sigmoid = ModelSection(**job).vit_config(10, loss="sigmoid_bce")
    assert architecture_changes(saved, sigmoid) == []  # the head-bias init is not the network


def test_the_deit_recipe_builds_deit_s_distilled_with_table_9_settings() -> None:
    import torch

    from pipelines.config import load_config

    job = load_config(Path(__file__).parents[2] / "configs" / "pretrain" / "deit_s16_i1k.yaml")
    built = job.model.vit_config(1000, loss=job.train.loss)
    assert built == vit_core.model_config("deit_small_distilled_patch16_224", drop_path_rate=0.1)
    with torch.device("meta"):
        assert vit_core.num_params(vit_core.VisionTransformer(built)) == 22_436_432  # timm's
    assert job.distill.kind == "hard" and job.distill.timm_model == "regnety_160"
    assert (job.optim.lr, job.optim.weight_decay, job.optim.grad_clip) == (1e-3, 0.05, None)
    assert (job.augment.mixup_alpha, job.augment.cutmix_alpha) == (0.8, 1.0)
    assert job.train.label_smoothing == 0.1 and job.train.global_batch_size == 1024
    assert job.train.total_steps == 300 * (1_268_355 // 1024)


# The fields of `model:` that are not ViTConfig's, and ViTConfig's that `model:` does not take.
SECTION_ONLY = {"name": "the preset", "grad_checkpointing": "how the model runs, not what it is"}
NOT_IN_SECTION = {"head_bias_init": "set from train.loss (sigmoid: -10)"}


def test_the_section_takes_every_vit_config_field() -> None:
    section = set(ModelSection.model_fields) - set(SECTION_ONLY)
    vit = {f.name for f in dataclasses.fields(vit_core.ViTConfig)} - set(NOT_IN_SECTION)
    assert section == vit, f"only in model: {section - vit}; only in ViTConfig: {vit - section}"
    assert all(ModelSection.model_fields[name].default is None for name in section)
    backbone = {f.name for f in dataclasses.fields(vit_core.BackboneConfig)}
    assert set(BackboneSection.model_fields) == backbone
