"""`--from s3://...` loads what is in storage now: the local cache of a model source is keyed by
content, not by the URI alone. A file the source no longer holds (a sharded Hugging Face dir
replaced by one `model.safetensors`) is cleared, weights whose sha256 the export records are
downloaded once and verified, and a cached file that no longer matches is downloaded again."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from pipelines.checkpoint.export import export_info, save_model
from pipelines.checkpoint.model_sources import load_source_model, local_source
from pipelines.layout import EXPORT_WEIGHTS
from pipelines.storage import locate
from pipelines.transfer import upload_dir
from vit_core import VisionTransformer, ViTConfig

CONFIG = ViTConfig(img_size=32, patch_size=8, dim=32, depth=1, num_heads=2, num_classes=3)


def model(seed: int) -> VisionTransformer:
    torch.manual_seed(seed)
    return VisionTransformer(CONFIG).eval()


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    theirs = b.state_dict()
    return all(torch.equal(v, theirs[k]) for k, v in a.state_dict().items())


def replace(uri: str, folder: Path) -> None:
    """What a user does to put a new model at the same URI: remove the old, upload the new."""
    locate(uri).delete_tree()
    upload_dir(folder, locate(uri))


def sharded_hf_dir(source: VisionTransformer, out: Path) -> Path:
    """A Hugging Face dir whose weights are split over two files and an index."""
    save_model(source, out, fmt="hf", info=export_info(source, fmt="hf"))
    tensors = load_file(str(out / EXPORT_WEIGHTS))
    names = sorted(tensors)
    weight_map = {}
    for part, chunk in enumerate((names[: len(names) // 2], names[len(names) // 2 :]), 1):
        file = f"model-{part:05d}-of-00002.safetensors"
        save_file({k: tensors[k] for k in chunk}, str(out / file))
        weight_map.update(dict.fromkeys(chunk, file))
    (out / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (out / EXPORT_WEIGHTS).unlink()
    return out


@pytest.fixture
def prefix(s3_store) -> str:
    return f"{s3_store}/sources-{uuid.uuid4().hex[:8]}"


def test_a_source_replaced_in_storage_is_loaded_as_it_is_now(prefix, tmp_path):
    uri = f"{prefix}/hf"
    old, new = model(0), model(1)
    replace(uri, sharded_hf_dir(old, tmp_path / "old"))
    assert same_weights(load_source_model(uri).model, old)

    single = tmp_path / "new"
    save_model(new, single, fmt="hf", info=export_info(new, fmt="hf"))
    replace(uri, single)
    assert same_weights(load_source_model(uri).model, new)  # not the leftover index's shards
    assert sorted(p.name for p in local_source(uri).iterdir()) == sorted(
        p.name for p in single.iterdir()
    )


def test_recorded_weights_are_downloaded_once_and_verified(prefix, tmp_path, s3_server):
    uri = f"{prefix}/export"
    first, second = model(2), model(3)
    save_model(first, uri, info=export_info(first))

    def weights_downloaded() -> int:
        key = locate(uri).join(EXPORT_WEIGHTS).path
        found = [r for r in s3_server.requests_since(mark) if r.method == "GET" and key in r.path]
        return sum(r.bytes_out for r in found)

    mark = s3_server.mark()
    assert same_weights(load_source_model(uri).model, first)
    size = locate(uri).join(EXPORT_WEIGHTS).size()
    assert weights_downloaded() == size
    mark = s3_server.mark()
    assert same_weights(load_source_model(uri).model, first)
    assert weights_downloaded() == 0  # the cached copy matches the recorded sha256

    cached = local_source(uri) / EXPORT_WEIGHTS
    data = bytearray(cached.read_bytes())
    data[-1] ^= 0xFF
    cached.write_bytes(bytes(data))  # changed on this machine
    mark = s3_server.mark()
    assert same_weights(load_source_model(uri).model, first)
    assert weights_downloaded() == size

    locate(uri).delete_tree()
    save_model(second, uri, info=export_info(second))  # same size, other weights
    assert same_weights(load_source_model(uri).model, second)
