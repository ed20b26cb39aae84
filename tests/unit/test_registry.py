"""The fine-tuned model in the MLflow Model Registry: real MLflow, SQLite store under tmp_path."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.checkpoint.export import EXPORT_FORMAT, save_model
from pipelines.config.data import AugmentSection
from pipelines.data.loader.transforms import Normalize, eval_transform
from pipelines.errors import CheckpointError
from pipelines.tracking.mlflow_run import TrackingTarget
from pipelines.tracking.pyfunc_model import preprocess, preprocess_settings
from pipelines.tracking.registry import load_registered, log_and_register, use_tracking_uri
from vit_core import VisionTransformer, ViTConfig

MEAN, STD, CROP = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225], 0.8


def tiny_classifier() -> VisionTransformer:
    torch.manual_seed(0)
    config = ViTConfig(img_size=32, patch_size=8, dim=32, depth=1, num_heads=2, num_classes=7)
    model = VisionTransformer(config)
    with torch.no_grad():  # a head that spreads predictions over several classes
        model.head.weight.normal_(std=3.0)
        model.head.bias.normal_(std=0.5)
    return model.eval()


def images(n: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n, 1, 1, 3))  # one colour per image, plus noise
    noise = rng.integers(-40, 40, (n, height, width, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def loader_preprocess(batch: np.ndarray, img_size: int) -> torch.Tensor:
    """What ShardLoader(train=False) does to each decoded image."""
    augment = AugmentSection(mean=MEAN, std=STD, eval_crop_pct=CROP)
    transform, normalize = eval_transform(augment, img_size), Normalize(MEAN, STD)
    out = torch.empty(len(batch), 3, img_size, img_size)
    for i, image in enumerate(batch):
        normalize(transform(torch.from_numpy(image).permute(2, 0, 1)), out[i])
    return out


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("registry")
    model = tiny_classifier()
    info = {
        "format": EXPORT_FORMAT,
        "weights_format": "safetensors",
        "vit_config": model.config.to_dict(),
        "classes": [f"c{i}" for i in range(7)],
        "preprocess": {"img_size": 32, "mean": MEAN, "std": STD, "crop_pct": CROP},
    }
    save_model(model, root / "export", info=info)
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment("finetune", artifact_location=str(root / "artifacts"))
    run = client.create_run(experiment_id, run_name="finetune")
    target = TrackingTarget(uri, run.info.run_id, experiment_id)
    before = global_tracking_uri()
    model_uri = log_and_register(
        target, root / "export", registered_name="vit-tiny", input_example=images(2, 40, 48)
    )
    return {
        "root": root,
        "model": model,
        "target": target,
        "client": client,
        "uri": model_uri,
        "global_uri": (before, global_tracking_uri()),
    }


def global_tracking_uri() -> str | None:
    import mlflow
    from mlflow.tracking import is_tracking_uri_set

    return mlflow.get_tracking_uri() if is_tracking_uri_set() else None


def test_registered_model_predicts_class_ids(registered) -> None:
    import mlflow.pyfunc

    assert registered["uri"] == "models:/vit-tiny/1"
    batch = images(16, 45, 61, seed=1)  # not the example's size: any H, W is accepted
    with use_tracking_uri(registered["target"].uri):
        loaded = mlflow.pyfunc.load_model(registered["uri"])
    ids = loaded.predict(batch)
    assert isinstance(ids, np.ndarray) and ids.dtype == np.int64 and ids.shape == (16,)
    with torch.no_grad():
        expected = registered["model"](loader_preprocess(batch, 32)).argmax(dim=-1).numpy()
    np.testing.assert_array_equal(ids, expected)
    assert len(set(ids.tolist())) > 1  # the comparison means something

    again = load_registered(registered["uri"], tracking_uri=registered["target"].uri)
    np.testing.assert_array_equal(again.predict(batch[:3]), ids[:3])


def test_preprocessing_is_the_eval_loaders(registered) -> None:
    info = json.loads((registered["root"] / "export" / "config.json").read_text())
    settings = preprocess_settings(info)
    assert settings == {"img_size": 32, "mean": MEAN, "std": STD, "crop_pct": CROP}
    for height, width in [(45, 61), (80, 30), (32, 32)]:
        batch = images(3, height, width, seed=height)
        assert torch.equal(preprocess(batch, **settings), loader_preprocess(batch, 32))


def test_registration_leaves_the_run_and_global_state_alone(registered) -> None:
    import mlflow

    client, target = registered["client"], registered["target"]
    before, after = registered["global_uri"]
    assert after == before
    run = client.get_run(target.run_id)
    assert run.info.status == "RUNNING"  # its owner ends it
    assert mlflow.active_run() is None
    assert len(client.search_runs([target.experiment_id])) == 1  # no run made on the side
    version = client.get_model_version("vit-tiny", "1")
    assert version.run_id == target.run_id
    (output,) = run.outputs.model_outputs  # the run lists the logged model among its outputs
    assert version.source == f"models:/{output.model_id}"
    logged = client.get_logged_model(output.model_id)
    assert str(logged.status) == "READY"
    assert logged.experiment_id == target.experiment_id
    assert logged.artifact_location.startswith(str(registered["root"] / "artifacts"))
    # a second registration is the next version of the same model
    uri = log_and_register(
        target,
        registered["root"] / "export",
        registered_name="vit-tiny",
        input_example=images(1, 32, 32),
    )
    assert uri == "models:/vit-tiny/2"


def test_export_without_preprocess_entry_uses_defaults() -> None:
    settings = preprocess_settings({"vit_config": {"img_size": 48}})
    assert settings == {"img_size": 48, "mean": [0.5] * 3, "std": [0.5] * 3, "crop_pct": 0.875}


def test_bad_exports_and_inputs(registered, tmp_path: Path) -> None:
    target = registered["target"]
    with pytest.raises(CheckpointError, match="not a vitpipe export"):
        log_and_register(target, tmp_path, registered_name="x", input_example=images(1, 8, 8))
    broken = tmp_path / "broken"
    shutil.copytree(registered["root"] / "export", broken)
    info = json.loads((broken / "config.json").read_text())
    info["vit_config"]["num_classes"] = 9  # weights have 7
    (broken / "config.json").write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match="does not load or run"):
        log_and_register(target, broken, registered_name="x", input_example=images(1, 8, 8))
    with pytest.raises(ValueError, match="uint8"):
        log_and_register(
            target,
            registered["root"] / "export",
            registered_name="x",
            input_example=images(1, 8, 8).astype(np.float32),
        )


def test_use_tracking_uri_restores_what_was_there(tmp_path: Path) -> None:
    import mlflow

    outer = global_tracking_uri()
    first, second = f"sqlite:///{tmp_path}/a.db", f"sqlite:///{tmp_path}/b.db"
    with use_tracking_uri(first):
        with use_tracking_uri(second):
            assert mlflow.get_tracking_uri() == second
        assert mlflow.get_tracking_uri() == first
    assert global_tracking_uri() == outer
