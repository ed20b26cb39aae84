"""`vitpipe shard` end to end on a real local Ray (the session's one instance), real files."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from launch.cli import main as cli_main
from launch.stages.shard import run_shard
from pipelines.config import config_from_dict
from pipelines.data.manifest import read_manifest
from pipelines.data.rejects import read_rejects
from pipelines.storage import locate


@pytest.fixture(scope="module", autouse=True)
def _warm_ray_workers(ray_local):
    """Start both Ray workers and import what the shard tasks import, once per module."""
    import ray

    @ray.remote(num_cpus=1)
    def warm_up() -> int:
        import pipelines.data.shard_writer  # noqa: F401
        from pipelines.data.sources.digits import _digits

        _digits()
        return os.getpid()

    ray.get([warm_up.remote() for _ in range(2)])


def _config(output: Path, source: dict, **shard):
    return config_from_dict(
        {
            "shard": {"source": source, "output": str(output), **shard},
            "tracking": {"enabled": False},
        }
    )


def _read_samples(root: Path, split: str) -> list[dict]:
    """Every sample of a split, in manifest order, as {key: {ext: bytes}}."""
    manifest = read_manifest(str(root))
    samples: list[dict] = []
    for shard in manifest.split(split).shards:
        with tarfile.open(root / shard.name) as tar:
            for member in tar.getmembers():
                key, _, ext = member.name.partition(".")
                if not samples or samples[-1]["__key__"] != key:
                    samples.append({"__key__": key})
                samples[-1][ext] = tar.extractfile(member).read()
    return samples


def _shas(root: Path) -> dict[str, str]:
    manifest = read_manifest(str(root))
    return {s.name: s.sha256 for split in manifest.splits.values() for s in split.shards}


def _encode(image: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt)
    return out.getvalue()


def _noise(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_digits_splits_workers_and_rerun(tmp_path):
    source = {"kind": "digits", "image_size": 16}
    common = {"samples_per_shard": 400, "image_format": "png", "val_fraction": 0.2}
    one = run_shard(_config(tmp_path / "one", source, num_workers=1, **common), progress=False)
    two = run_shard(_config(tmp_path / "two", source, num_workers=2, **common), progress=False)
    assert one["num_samples"] == two["num_samples"] == 1797
    assert one["num_rejected"] == 0 and one["num_classes"] == 10
    assert _shas(tmp_path / "one") == _shas(tmp_path / "two")

    manifest = read_manifest(str(tmp_path / "two"))
    assert manifest.classes == tuple(str(i) for i in range(10))
    assert manifest.split("train").num_samples + manifest.split("val").num_samples == 1797
    keys = set()
    for split in ("train", "val"):
        samples = _read_samples(tmp_path / "two", split)
        assert {int(s["cls"]) for s in samples} == set(range(10)), split
        keys |= {s["__key__"] for s in samples}
        meta = json.loads(samples[0]["json"])
        assert meta["original_size"] == [8, 8] and meta["label_name"] == samples[0]["cls"].decode()
    assert len(keys) == 1797
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["num_shards_written"] == summary["num_shards"] == 5
    assert summary["splits"]["val"]["num_samples"] == manifest.split("val").num_samples

    shards = sorted((tmp_path / "two").glob("*.tar"))
    before = {p.name: (os.stat(p).st_ino, os.stat(p).st_mtime_ns) for p in shards}
    manifest_stat = os.stat(tmp_path / "two" / "manifest.json").st_mtime_ns
    rerun = run_shard(_config(tmp_path / "two", source, num_workers=2, **common), progress=False)
    assert rerun["num_shards_skipped"] == 5 and rerun["num_shards_written"] == 0
    after = {p.name: (os.stat(p).st_ino, os.stat(p).st_mtime_ns) for p in shards}
    assert after == before
    assert os.stat(tmp_path / "two" / "manifest.json").st_mtime_ns == manifest_stat

    # a different plan rewrites, and shards it no longer has are removed
    bigger = dict(common, samples_per_shard=1000)
    changed = run_shard(_config(tmp_path / "two", source, **bigger), progress=False)
    assert changed["num_shards"] == 3
    assert changed["num_shards_skipped"] == 1  # val-000000 holds the same samples as before
    names = sorted(p.name for p in (tmp_path / "two").glob("*.tar"))
    assert names == ["train-000000.tar", "train-000001.tar", "val-000000.tar"]
    assert sorted(_shas(tmp_path / "two")) == names


def _bad_imagefolder(root: Path) -> None:
    (root / "cats").mkdir(parents=True)
    (root / "dogs").mkdir()
    for i in range(3):
        (root / "cats" / f"cat{i}.jpg").write_bytes(_encode(_noise(64, 48, i), "JPEG"))
        (root / "dogs" / f"dog{i}.png").write_bytes(_encode(_noise(40, 60, 10 + i), "PNG"))
    jpeg = _encode(_noise(64, 48, 99), "JPEG")
    (root / "cats" / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (root / "cats" / "empty.jpg").write_bytes(b"")
    (root / "dogs" / "notes.jpg").write_text("this is not an image\n")
    (root / "cats" / "cmyk.jpg").write_bytes(_encode(_noise(64, 48, 5).convert("CMYK"), "JPEG"))
    grey16 = (np.arange(60 * 40, dtype=np.uint32).reshape(40, 60) * 27).astype(np.uint16)
    (root / "dogs" / "grey16.png").write_bytes(_encode(Image.fromarray(grey16), "PNG"))


def test_imagefolder_with_bad_files(tmp_path):
    _bad_imagefolder(tmp_path / "images")
    config = _config(
        tmp_path / "out",
        {"kind": "imagefolder", "path": str(tmp_path / "images")},
        samples_per_shard=3,
        max_size=32,
    )
    summary = run_shard(config, progress=False)
    assert summary["num_samples"] == 8 and summary["num_rejected"] == 3
    rejected = {r.source_id: r.reason for r in read_rejects(locate(str(tmp_path / "out")))}
    assert rejected == {
        "cats/truncated.jpg": "truncated",
        "cats/empty.jpg": "zero_bytes",
        "dogs/notes.jpg": "not_an_image",
    }
    samples = {s["__key__"]: s for s in _read_samples(tmp_path / "out", "train")}
    assert set(samples) == {
        "cats_cat0", "cats_cat1", "cats_cat2", "cats_cmyk",
        "dogs_dog0", "dogs_dog1", "dogs_dog2", "dogs_grey16",
    }  # fmt: skip
    for key in ("cats_cmyk", "dogs_grey16"):
        image = Image.open(io.BytesIO(samples[key]["jpg"]))
        image.load()
        assert image.mode == "RGB" and min(image.size) == 32
    assert json.loads(samples["dogs_grey16"]["json"]) == {
        "label_name": "dogs",
        "original_size": [60, 40],
        "source": "dogs/grey16.png",
    }
    assert samples["dogs_dog0"]["cls"] == b"1"
    # the rejects of skipped shards survive a re-run
    rerun = run_shard(config, progress=False)
    assert rerun["num_shards_skipped"] == rerun["num_shards"] and rerun["num_rejected"] == 3


def test_parquet_huggingface_export(tmp_path):
    images = [{"bytes": _encode(_noise(24, 24, i), "PNG"), "path": f"{i}.png"} for i in range(12)]
    labels = [i % 3 for i in range(12)]
    features = {
        "image": {"_type": "Image"},
        "label": {"names": ["a", "b", "c"], "_type": "ClassLabel"},
    }
    table = pa.table(
        {
            "image": pa.array(images, pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
            "label": pa.array(labels, pa.int64()),
        }
    ).replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})})
    pq.write_table(table, tmp_path / "train-00000-of-00001.parquet", row_group_size=5)
    config = _config(
        tmp_path / "out",
        {"kind": "parquet", "path": str(tmp_path / "train-00000-of-00001.parquet")},
        samples_per_shard=4,
        image_format="keep",
        val_fraction=0.25,
    )
    summary = run_shard(config, progress=False)
    assert summary["num_samples"] == 12 and summary["num_rejected"] == 0
    manifest = read_manifest(str(tmp_path / "out"))
    assert manifest.classes == ("a", "b", "c")
    assert manifest.split("val").num_samples == 3
    samples = _read_samples(tmp_path / "out", "train") + _read_samples(tmp_path / "out", "val")
    by_source = {json.loads(s["json"])["source"]: s for s in samples}
    assert by_source["train-00000-of-00001.parquet#7"]["png"] == images[7]["bytes"]  # kept as is
    assert by_source["train-00000-of-00001.parquet#7"]["cls"] == b"1"


def test_csv_source(tmp_path):
    (tmp_path / "pics").mkdir()
    lines = ["path,label"]
    for i in range(6):
        (tmp_path / "pics" / f"p{i}.jpg").write_bytes(_encode(_noise(20, 20, i), "JPEG"))
        lines.append(f"pics/p{i}.jpg,{'bird' if i % 2 else 'fish'}")
    lines.append("pics/nope.jpg,bird")
    (tmp_path / "list.csv").write_text("\n".join(lines) + "\n")
    source = {"kind": "csv", "path": str(tmp_path / "list.csv")}
    config = config_from_dict(
        {
            "shard": {"source": source, "output": f"file://{tmp_path}/out"},
            "tracking": {"enabled": False},
        }
    )
    summary = run_shard(config, progress=False)
    assert summary["output"] == f"file://{tmp_path}/out"
    assert summary["num_samples"] == 6 and summary["rejected_by_reason"] == {"file_missing": 1}
    assert read_manifest(str(tmp_path / "out")).classes == ("bird", "fish")
    samples = _read_samples(tmp_path / "out", "train")
    assert {s["__key__"]: s["cls"] for s in samples}["pics_p1"] == b"0"


def test_fractal_same_seed_same_bytes(tmp_path):
    source = {"kind": "fractal", "num_classes": 3, "images_per_class": 10, "image_size": 16,
              "num_points": 1000}  # fmt: skip
    a = run_shard(_config(tmp_path / "a", source, samples_per_shard=8), progress=False)
    b = run_shard(
        _config(tmp_path / "b", source, samples_per_shard=8, num_workers=1), progress=False
    )
    assert a["num_samples"] == b["num_samples"] == 30
    assert _shas(tmp_path / "a") == _shas(tmp_path / "b")
    other = dict(source, seed=1)
    run_shard(_config(tmp_path / "c", other, samples_per_shard=8), progress=False)
    assert _shas(tmp_path / "c") != _shas(tmp_path / "a")


def test_glyphs_same_bytes_at_any_worker_count(tmp_path):
    source = {"kind": "glyphs", "num_classes": 4, "images_per_class": 6, "image_size": 16,
              "low_res": 8}  # fmt: skip
    common = {"samples_per_shard": 5, "image_format": "png", "val_fraction": 0.2}
    a = run_shard(_config(tmp_path / "a", source, num_workers=2, **common), progress=False)
    b = run_shard(_config(tmp_path / "b", source, num_workers=1, **common), progress=False)
    assert a["num_samples"] == b["num_samples"] == 24 and a["num_classes"] == 4
    assert _shas(tmp_path / "a") == _shas(tmp_path / "b")
    manifest = read_manifest(str(tmp_path / "a"))
    assert manifest.classes[0] == "U+0041 LATIN CAPITAL LETTER A"
    assert manifest.source["kind"] == "glyphs" and manifest.source["low_res"] == 8
    run_shard(_config(tmp_path / "c", dict(source, seed=1), **common), progress=False)
    assert _shas(tmp_path / "c") != _shas(tmp_path / "a")


def test_cli(tmp_path, capsys):
    config = tmp_path / "digits.yaml"
    config.write_text(
        "shard:\n  source:\n    kind: digits\n    image_size: 8\n"
        f"  output: {tmp_path / 'out'}\n  samples_per_shard: 1000\n"
    )
    assert cli_main(["shard", "-c", str(config), "--no-progress", "--set", "shard.seed=1"]) == 0
    out = capsys.readouterr().out
    assert "1797 samples" in out and "10 classes" in out
    no_shard = tmp_path / "train.yaml"
    no_shard.write_text("name: x\n")
    assert cli_main(["shard", "-c", str(no_shard)]) == 2
    assert "shard" in capsys.readouterr().err
