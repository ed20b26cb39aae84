"""Fine-tuning: from a sharded checkpoint of any world size, an export, or a Hugging Face dir;
at a new image size; as a linear probe; exported and registered in MLflow; and evaluated."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from launch.cli import main as cli_main
from launch.stages.finetune import run_finetune_stage
from launch.stages.training import run_training_stage
from pipelines.checkpoint.export import export_checkpoint, load_checkpoint_model, load_exported
from pipelines.checkpoint.files import latest_checkpoint
from pipelines.train.model_init import build_model
from pipelines.train.request import TrainRequest

from train_fixtures import as_config, tiny_job

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pretrained(fractal_shards, tmp_path_factory, ray_local):
    """Pretraining checkpoints of the tiny ViT saved by 2 workers and by 1 worker."""
    made = {}
    for workers in (2, 1):
        tmp = tmp_path_factory.mktemp(f"pretrained{workers}")
        raw = tiny_job(
            fractal_shards,
            tmp,
            train={"total_steps": 3},
            checkpoint={"every_n_steps": None},
            cluster={"num_workers": workers},
            tracking={"enabled": False},
        )
        result = run_training_stage(as_config(raw), run_dir=tmp / "run", progress=False)
        made[workers] = Path(result["checkpoint"])
    return made


def finetune_job(digits: Path, tmp_path: Path, **sections) -> dict:
    raw = tiny_job(
        digits,
        tmp_path,
        finetune={"mode": "full"},
        augment={"hflip": 0.0},
        optim={"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 0.0},
        train={"total_steps": 3, "eval_every_n_steps": 3},
        checkpoint={"every_n_steps": None},
    )
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return raw


@pytest.mark.parametrize(("saved_by", "tuned_on"), [(2, 1), (1, 2)])
def test_finetune_a_checkpoint_saved_by_another_world_size(
    pretrained, digits_shards, tmp_path, saved_by, tuned_on
):
    raw = finetune_job(digits_shards, tmp_path, cluster={"num_workers": tuned_on})
    result = run_finetune_stage(
        as_config(raw), init_from=pretrained[saved_by], run_dir=tmp_path / "ft", progress=False
    )
    assert result["status"] == "finished" and result["world_size"] == tuned_on
    assert result["num_classes"] == 10 and result["val_top1"] is not None
    model, info = load_exported(Path(result["export_dir"]))
    assert model.config.head == "linear" and model.config.num_classes == 10
    assert info["classes"] == [str(d) for d in range(10)]
    assert result["registered_model_uri"].startswith("models:/")

    import mlflow

    from pipelines.tracking.registry import load_registered

    loaded = load_registered(
        result["registered_model_uri"], tracking_uri=result["mlflow_tracking_uri"]
    )
    images = np.random.default_rng(0).integers(0, 256, (3, 40, 40, 3), dtype=np.uint8)
    predicted = loaded.predict(images)
    assert predicted.shape == (3,) and predicted.dtype == np.int64
    assert isinstance(loaded, mlflow.pyfunc.PyFuncModel)


def test_head_is_swapped_for_a_zero_linear_head_and_pos_embed_resampled(
    pretrained, digits_shards, tmp_path
):
    raw = finetune_job(digits_shards, tmp_path, finetune={"img_size": 64})
    request = TrainRequest(config=as_config(raw), run_dir=tmp_path, init_from=str(pretrained[2]))
    model = build_model(request, num_classes=10)
    source = load_checkpoint_model(latest_checkpoint(pretrained[2].parent))
    assert source.config.head == "mlp"
    assert model.config.head == "linear" and not hasattr(model.pre_logits, "fc")
    assert torch.count_nonzero(model.head.weight) == 0 and torch.count_nonzero(model.head.bias) == 0
    assert model.config.img_size == 64 and model.pos_embed.shape[1] == 1 + (64 // 4) ** 2
    import vit_core

    expected = vit_core.resample_pos_embed(source.pos_embed.detach(), (16, 16), (8, 8))
    assert torch.allclose(model.pos_embed.detach(), expected)
    assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 10)

    result = run_finetune_stage(
        as_config(raw),
        init_from=pretrained[2],
        run_dir=tmp_path / "ft64",
        launcher="local",
        progress=False,
    )
    assert result["status"] == "finished"
    tuned, _ = load_exported(Path(result["export_dir"]))
    assert tuned.config.img_size == 64


def test_finetune_from_an_export_dir_as_a_linear_probe(pretrained, digits_shards, tmp_path):
    export = tmp_path / "export"
    export_checkpoint(pretrained[2], export)
    raw = finetune_job(digits_shards, tmp_path, finetune={"mode": "linear_probe"})
    raw["tracking"]["enabled"] = False
    result = run_finetune_stage(
        as_config(raw), init_from=export, run_dir=tmp_path / "ft", launcher="local", progress=False
    )
    assert result["status"] == "finished" and result["registered_model_uri"] is None
    tuned, _ = load_exported(Path(result["export_dir"]))
    source, _ = load_exported(export)
    for name, tensor in tuned.state_dict().items():
        if name.startswith("blocks.") or name in ("cls_token", "pos_embed"):
            assert torch.equal(tensor, source.state_dict()[name]), name  # frozen backbone
    assert torch.count_nonzero(tuned.head.weight) > 0


def test_finetune_from_a_hugging_face_dir(digits_shards, tmp_path):
    transformers = pytest.importorskip("transformers")
    hf_config = transformers.ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        num_labels=7,
    )
    torch.manual_seed(0)
    transformers.ViTForImageClassification(hf_config).save_pretrained(tmp_path / "hf")
    raw = finetune_job(digits_shards, tmp_path)
    raw["tracking"]["enabled"] = False
    result = run_finetune_stage(
        as_config(raw),
        init_from=tmp_path / "hf",
        run_dir=tmp_path / "ft",
        launcher="local",
        progress=False,
    )
    assert result["status"] == "finished"
    tuned, _ = load_exported(Path(result["export_dir"]))
    assert tuned.config.dim == 32 and tuned.config.num_classes == 10


def test_bad_from_is_one_clear_error(digits_shards, tmp_path, capsys):
    config = tmp_path / "ft.yaml"
    config.write_text(json.dumps(finetune_job(digits_shards, tmp_path)))
    (tmp_path / "empty").mkdir()
    assert cli_main(["finetune", "-c", str(config), "--from", str(tmp_path / "empty")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "is not a model" in err


def test_eval_reports_accuracy_confusion_and_fewshot(pretrained, digits_shards, tmp_path, capsys):
    raw = finetune_job(digits_shards, tmp_path)
    tuned = run_finetune_stage(
        as_config(raw),
        init_from=pretrained[2],
        run_dir=tmp_path / "ft",
        launcher="local",
        progress=False,
    )
    config = tmp_path / "eval.yaml"
    config.write_text(json.dumps(raw))
    code = cli_main(
        [
            "eval",
            "-c",
            str(config),
            "--from",
            tuned["export_dir"],
            "--run-dir",
            str(tmp_path / "ev"),
            "--no-progress",
        ]
    )
    assert code == 0
    written = json.loads((tmp_path / "ev" / "summary.json").read_text())
    from pipelines.data.manifest import read_manifest

    val_count = read_manifest(str(digits_shards)).split("val").num_samples
    assert written["count"] == val_count and 0 <= written["val_top1"] <= 1
    assert len(written["per_class_accuracy"]) == 10
    assert (tmp_path / "ev" / "confusion_matrix.png").stat().st_size > 0

    code = cli_main(
        ["eval", "-c", str(config), "--from", str(pretrained[2]), "--fewshot", "5,10"]
        + ["--run-dir", str(tmp_path / "fs"), "--no-progress"]
    )
    assert code == 0
    fewshot = json.loads((tmp_path / "fs" / "summary.json").read_text())
    assert fewshot["fewshot/10shot_top1"] > 0.3  # chance is 0.1


def test_periodic_fewshot_during_pretraining(fractal_shards, digits_shards, tmp_path):
    raw = tiny_job(
        fractal_shards,
        tmp_path,
        data={"fewshot_shards": str(digits_shards)},
        schedule={"warmup_steps": 1},
        train={"total_steps": 2, "fewshot_every_n_steps": 2, "fewshot_shots": [5]},
        checkpoint={"every_n_steps": None},
        tracking={"enabled": False},
        cluster={"num_workers": 1},
    )
    raw["train"]["global_batch_size"] = 16
    result = run_training_stage(
        as_config(raw), run_dir=tmp_path / "run", launcher="local", progress=False
    )
    assert 0 <= result["fewshot/5shot_top1"] <= 1
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert any("fewshot/5shot_top1" in json.loads(line) for line in lines)
