"""The hybrid and DeiT families through the stage functions the plain ViT uses: a tiny 32 px
hybrid (2-stage ResNet) pretrains, checkpoints, fine-tunes and exports; a tiny distilled model's
export loads in timm's VisionTransformerDistilled and transformers' DeiT with teacher heads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from launch.cli import main as cli_main
from launch.stages.finetune import run_finetune_stage
from launch.stages.training import run_training_stage
from pipelines.checkpoint.export import export_checkpoint, load_checkpoint_model, load_exported
from pipelines.checkpoint.files import open_checkpoint
from pipelines.errors import CheckpointError
from vit_core import BackboneConfig, describe_model

from timm_fixtures import timm_model
from train_fixtures import TINY_DISTILLED as DISTILLED
from train_fixtures import TINY_HYBRID as HYBRID
from train_fixtures import as_config, tiny_job

pytestmark = pytest.mark.slow


def small_job(shards: Path, tmp_path: Path, **sections) -> dict:
    """Two steps on one local process (the launcher `torchrun` uses), loading in-process."""
    return tiny_job(
        shards,
        tmp_path,
        data={"num_workers": 0},
        train={
            "total_steps": 2,
            "global_batch_size": 16,
            "micro_batch_size": 8,
            "eval_max_batches": 1,
        },  # fmt: skip
        schedule={"warmup_steps": 1},
        checkpoint={"every_n_steps": None},
        tracking={"enabled": False},
        cluster={"num_workers": 1},
        **sections,
    )


def pretrain(shards: Path, tmp_path: Path, model: dict) -> Path:
    """The final checkpoint of a two-step pretraining of `model`."""
    raw = small_job(shards, tmp_path, model=model)
    result = run_training_stage(
        as_config(raw), run_dir=tmp_path / "run", launcher="local", progress=False
    )
    assert result["status"] == "finished"
    return Path(result["checkpoint"])


def logits_equal(ours: torch.nn.Module, theirs, x: torch.Tensor) -> None:
    with torch.no_grad():
        got = theirs(x)
        got = getattr(got, "logits", got)
        torch.testing.assert_close(got, ours.eval()(x), rtol=0, atol=1e-5)


def test_a_tiny_hybrid_pretrains_finetunes_and_exports(
    fractal_shards, digits_shards, tmp_path, capsys
):
    checkpoint = pretrain(fractal_shards, tmp_path / "pre", HYBRID)
    pretrained = load_checkpoint_model(open_checkpoint(checkpoint))
    backbone = BackboneConfig(layers=(1, 1), widths=(32, 64), stem_width=16, num_groups=8)
    assert pretrained.config.backbone == backbone and pretrained.config.head == "mlp"
    assert describe_model(pretrained.config).startswith("custom hybrid ViT (ResNet-V2")
    capsys.readouterr()  # what loading the shards printed above
    code = cli_main(["export", str(checkpoint), str(tmp_path / "hf"), "--format", "hf"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and err.count("\n") == 0 and "no hybrid" in err
    assert not (tmp_path / "hf").exists()

    raw = small_job(
        digits_shards,
        tmp_path,
        finetune={"mode": "full"},
        optim={"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 0.0},
    )
    result = run_finetune_stage(
        as_config(raw), init_from=checkpoint, run_dir=tmp_path / "ft", launcher="local",
        progress=False,
    )  # fmt: skip
    assert result["status"] == "finished" and result["val_top1"] is not None
    tuned, info = load_exported(Path(result["export_dir"]))
    assert tuned.config.backbone == backbone and tuned.config.head == "linear"
    assert tuned.config.num_classes == 10 and info["model"].startswith("custom hybrid ViT")

    out = tmp_path / "timm"
    export_checkpoint(Path(result["checkpoint"]), out, fmt="timm")
    from safetensors.torch import load_file

    theirs = timm_model(tuned.config).eval()
    theirs.load_state_dict(load_file(out / "model.safetensors"), strict=True)
    logits_equal(tuned, theirs, torch.randn(2, 3, 32, 32))

    with pytest.raises(CheckpointError, match="--format hf: Hugging Face transformers has no"):
        export_checkpoint(Path(result["checkpoint"]), tmp_path / "hf", fmt="hf")


def test_a_tiny_distilled_model_exports_to_timm_and_hugging_face(fractal_shards, tmp_path):
    checkpoint = pretrain(fractal_shards, tmp_path, DISTILLED)
    model = load_checkpoint_model(open_checkpoint(checkpoint))
    assert model.config.distilled and model.config.head == "linear"
    x = torch.randn(2, 3, 32, 32)

    export_checkpoint(checkpoint, tmp_path / "timm", fmt="timm")
    from safetensors.torch import load_file
    from timm.models.deit import VisionTransformerDistilled

    theirs = timm_model(model.config).eval()
    assert isinstance(theirs, VisionTransformerDistilled)
    theirs.load_state_dict(load_file(tmp_path / "timm" / "model.safetensors"), strict=True)
    logits_equal(model, theirs, x)

    transformers = pytest.importorskip("transformers")
    export_checkpoint(checkpoint, tmp_path / "hf", fmt="hf")
    hf = transformers.DeiTForImageClassificationWithTeacher.from_pretrained(tmp_path / "hf")
    logits_equal(model, hf.eval(), x)
    from vit_core import load_hf_dir

    assert load_hf_dir(tmp_path / "hf").config == model.config
