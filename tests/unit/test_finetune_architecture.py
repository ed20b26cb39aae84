"""The driver reads a fine-tuning source's architecture without loading its weights:
`architecture(request, n)` is `build_model(request, n).config` for every kind of source (an
export, a sharded checkpoint, a Hugging Face dir with a classifier, a pooler, DeiT's two heads
or a torch weight file), at the source's image size and at another (`finetune.img_size`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pipelines.checkpoint.export import export_info, save_model
from pipelines.train import model_init
from pipelines.train.model_init import architecture, build_model
from pipelines.train.request import TrainRequest
from vit_core import VisionTransformer, ViTConfig, hf_config_dict, to_hf

from train_fixtures import as_config, tiny_job

CHECKPOINT = Path(__file__).parents[1] / "fixtures" / "ckpt_v0_1"  # ZeRO-2 on 2 ranks, 0.1
SMALL = {"img_size": 32, "patch_size": 4, "dim": 64, "depth": 2, "num_heads": 2}
NUM_CLASSES = 7


def _export(tmp: Path, config: ViTConfig, fmt: str = "safetensors") -> Path:
    model = VisionTransformer(config)
    save_model(model, tmp / fmt, fmt=fmt, info=export_info(model, fmt=fmt))
    return tmp / fmt


def _hf_torch_file(tmp: Path, config: ViTConfig) -> Path:
    """A save_pretrained-style dir with a `pytorch_model.bin` (read weights-only)."""
    out = tmp / "hf-bin"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({**hf_config_dict(config), "model_type": "vit"}))
    torch.save(to_hf(VisionTransformer(config)), out / "pytorch_model.bin")
    return out


SOURCES = {
    "export, mlp head": lambda tmp: _export(tmp, ViTConfig(**SMALL, head="mlp", num_classes=3)),
    "export, distilled": lambda tmp: _export(
        tmp, ViTConfig(**SMALL, distilled=True, num_classes=3)
    ),
    "checkpoint": lambda tmp: CHECKPOINT,
    "hf, classifier": lambda tmp: _export(tmp, ViTConfig(**SMALL, ln_eps=1e-12), "hf"),
    "hf, pooler": lambda tmp: _export(
        tmp, ViTConfig(**SMALL, head="mlp", head_hidden_dim=48, ln_eps=1e-12), "hf"
    ),
    "hf, deit": lambda tmp: _export(tmp, ViTConfig(**SMALL, distilled=True), "hf"),
    "hf, torch file": lambda tmp: _hf_torch_file(tmp, ViTConfig(**SMALL, qkv_bias=False)),
}


@pytest.mark.parametrize("img_size", [None, 48])
@pytest.mark.parametrize("source", sorted(SOURCES))
def test_architecture_is_what_build_model_builds(source, img_size, tmp_path, monkeypatch):
    init_from = SOURCES[source](tmp_path)
    raw = tiny_job(tmp_path / "shards", tmp_path, finetune={"img_size": img_size})
    request = TrainRequest(
        config=as_config(raw), run_dir=str(tmp_path / "run"), init_from=str(init_from)
    )
    built = build_model(request, NUM_CLASSES).config

    def no_weights(path):
        raise AssertionError(f"architecture() loaded the model at {path}")

    monkeypatch.setattr(model_init, "load_source_model", no_weights)
    read = architecture(request, NUM_CLASSES)
    assert read == built
    assert read.head == "linear" and read.num_classes == NUM_CLASSES
    assert read.img_size == (img_size or 32)
