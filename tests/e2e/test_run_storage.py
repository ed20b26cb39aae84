"""Run storage on the one `Location` layer, against a local dir and a real S3-compatible server
on 127.0.0.1 (`s3_store`): small atomic writes, listing, deleting, verified transfers with
retries, and shards written to and read from `s3://`."""

from __future__ import annotations

import hashlib
import logging
import uuid

import pyarrow.fs as pafs
import pytest
from conftest import S3_PORT

from pipelines.errors import StorageError
from pipelines.storage import Entry, is_uri, locate
from pipelines.transfer import (
    FileDigest,
    download_dir,
    download_file,
    file_digest,
    upload_dir,
    upload_file,
)


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    """A fresh run-storage root: a local dir, or a fresh prefix of the test bucket."""
    if request.param == "local":
        return locate(str(tmp_path / "storage"))
    bucket = request.getfixturevalue("s3_store")
    return locate(f"{bucket}/{request.node.originalname}-{uuid.uuid4().hex[:6]}")


def test_small_files_round_trip_and_list(root):
    root.join("meta", "summary.json").write_json_atomic({"status": "finished", "steps": 4})
    root.join("latest").write_text_atomic("step_0000004")
    root.join("blob.bin").write_bytes_atomic(b"\x00\x01" * 10)

    assert root.join("meta", "summary.json").read_json() == {"status": "finished", "steps": 4}
    assert root.join("latest").read_text() == "step_0000004"
    assert root.join("blob.bin").read_bytes() == b"\x00\x01" * 10
    assert root.join("latest").exists() and not root.join("nope").exists()
    assert root.list_dir() == [
        Entry("blob.bin", 20, False),
        Entry("latest", 12, False),
        Entry("meta", 0, True),
    ]  # no temporary names left behind
    assert root.join("missing-dir").list_dir() == []

    root.join("meta").delete_tree()
    assert not root.join("meta", "summary.json").exists()
    assert [e.name for e in root.list_dir()] == ["blob.bin", "latest"]
    root.join("meta").delete_tree()  # gone already: nothing happens


def test_a_failed_write_leaves_nothing_and_keeps_the_old_file(root):
    target = root.join("COMMITTED.json")
    target.write_json_atomic({"v": 1})
    with pytest.raises(RuntimeError), target.open_write_atomic() as out:
        out.write(b'{"v": 2, "trunc')
        raise RuntimeError("writer died")
    assert target.read_json() == {"v": 1}
    fresh = root.join("never.json")
    with pytest.raises(RuntimeError), fresh.open_write_atomic() as out:
        out.write(b"half")
        raise RuntimeError("writer died")
    assert not fresh.exists()
    upload = root.join("rank0.pt")
    with pytest.raises(RuntimeError), upload.open_upload() as out:
        out.write(b"x" * 1000)
        raise RuntimeError("upload died")
    assert not upload.exists()
    assert [e.name for e in root.list_dir()] == ["COMMITTED.json"]


def test_local_paths_are_plain_dirs(tmp_path):
    loc = locate(str(tmp_path / "run"))
    assert loc.is_local and loc.local_path() == tmp_path / "run" and not is_uri(str(tmp_path))
    loc.join("a.txt").write_text_atomic("x")
    assert (tmp_path / "run" / "a.txt").read_text() == "x"


def test_s3_endpoint_from_the_environment_or_the_uri(s3_store, monkeypatch):
    loc = locate(f"{s3_store}/endpoint")
    assert not loc.is_local and is_uri(loc.uri)
    with pytest.raises(ValueError):
        loc.local_path()
    loc.join("x.txt").write_text_atomic("via AWS_ENDPOINT_URL")

    monkeypatch.delenv("AWS_ENDPOINT_URL")
    query = f"?endpoint_override=127.0.0.1:{S3_PORT}&scheme=http"
    explicit = locate(f"{s3_store}/endpoint{query}")
    child = explicit.join("x.txt")
    assert child.uri == f"{s3_store}/endpoint/x.txt{query}"
    assert child.read_text() == "via AWS_ENDPOINT_URL"
    assert locate(child.uri).read_text() == "via AWS_ENDPOINT_URL"


def test_upload_and_download_verify_size_and_sha256(root, tmp_path):
    local = tmp_path / "rank0.pt"
    local.write_bytes(bytes(range(256)) * 1000)
    sent = upload_file(local, root.join("ckpt", "rank0.pt"))
    assert sent == file_digest(local)
    assert sent == FileDigest(256_000, hashlib.sha256(local.read_bytes()).hexdigest())
    assert FileDigest.from_json(sent.to_json()) == sent

    back = tmp_path / "back" / "rank0.pt"
    assert download_file(root.join("ckpt", "rank0.pt"), back, expect=sent) == sent
    assert back.read_bytes() == local.read_bytes()

    wrong = FileDigest(sent.size, "0" * 64)
    other = tmp_path / "other.pt"
    with pytest.raises(StorageError, match=r"download .*rank0\.pt.*expected.*attempt 2/2"):
        download_file(root.join("ckpt", "rank0.pt"), other, expect=wrong, backoff_s=0, attempts=2)
    assert not other.exists() and list(tmp_path.glob(".other.pt.part-*")) == []

    with pytest.raises(StorageError, match="no such local file"):
        upload_file(tmp_path / "missing.pt", root.join("x"))
    with pytest.raises(StorageError, match="attempt 1/3"):  # a missing source is not retried
        download_file(root.join("ckpt", "missing.pt"), tmp_path / "m.pt", backoff_s=0)


def test_many_files_in_parallel(root, tmp_path):
    staged = tmp_path / "scratch" / "step_4"
    for rank in range(6):
        (staged / f"rank{rank}").mkdir(parents=True)
        (staged / f"rank{rank}" / "optim.pt").write_bytes(bytes([rank]) * (1000 + rank))
    digests = upload_dir(staged, root.join("step_4"), threads=4)
    assert sorted(digests) == [f"rank{r}/optim.pt" for r in range(6)]
    assert digests["rank5/optim.pt"] == FileDigest(
        1005, file_digest(staged / "rank5/optim.pt").sha256
    )

    wanted = {"rank2/optim.pt": digests["rank2/optim.pt"], "rank3/optim.pt": None}
    got = download_dir(root.join("step_4"), tmp_path / "resume", wanted, threads=2)
    assert got == {k: digests[k] for k in wanted}
    assert sorted(
        p.relative_to(tmp_path / "resume").as_posix() for p in (tmp_path / "resume").rglob("*.pt")
    ) == sorted(wanted)


class _FailingWrites(pafs.FileSystemHandler):
    """Fault injection: the real filesystem, except that the first `fail` output streams
    opened raise (an upload that dies on the network)."""

    def __init__(self, fs: pafs.FileSystem, fail: int):
        self.fs, self.fail = fs, fail

    def open_output_stream(self, path, metadata):
        if self.fail > 0:
            self.fail -= 1
            raise OSError("connection reset by peer (injected)")
        return self.fs.open_output_stream(path, metadata=metadata)

    def get_type_name(self):
        return self.fs.type_name

    def get_file_info(self, paths):
        return self.fs.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self.fs.get_file_info(selector)

    def create_dir(self, path, recursive):
        self.fs.create_dir(path, recursive=recursive)

    def delete_dir(self, path):
        self.fs.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self.fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        self.fs.delete_dir_contents("/", accept_root_dir=True)

    def delete_file(self, path):
        self.fs.delete_file(path)

    def move(self, src, dest):
        self.fs.move(src, dest)

    def copy_file(self, src, dest):
        self.fs.copy_file(src, dest)

    def open_input_stream(self, path):
        return self.fs.open_input_stream(path)

    def open_input_file(self, path):
        return self.fs.open_input_file(path)

    def open_append_stream(self, path, metadata):
        return self.fs.open_append_stream(path, metadata=metadata)

    def normalize_path(self, path):
        return self.fs.normalize_path(path)

    def equals(self, other):
        return self is other


def test_uploads_retry_then_fail_in_one_line(s3_store, tmp_path, caplog):
    from pipelines.storage import Location

    real = locate(f"{s3_store}/retry-{uuid.uuid4().hex[:6]}")
    local = tmp_path / "model_states.pt"
    local.write_bytes(b"w" * 5000)

    flaky = pafs.PyFileSystem(_FailingWrites(real.fs, fail=2))
    with caplog.at_level(logging.WARNING, logger="pipelines.transfer"):
        sent = upload_file(local, Location(flaky, real.path, real.uri).join("a.pt"), backoff_s=0)
    assert sent == file_digest(local)
    assert real.join("a.pt").read_bytes() == local.read_bytes()
    assert [r.getMessage().split(": ", 1)[1] for r in caplog.records] == [
        "connection reset by peer (injected); retrying (attempt 1/3)",
        "connection reset by peer (injected); retrying (attempt 2/3)",
    ]

    dead = pafs.PyFileSystem(_FailingWrites(real.fs, fail=99))
    with pytest.raises(StorageError) as err:
        upload_file(local, Location(dead, real.path, real.uri).join("b.pt"), backoff_s=0)
    assert str(err.value) == (
        f"upload {local} -> {real.uri}/b.pt: connection reset by peer (injected) (attempt 3/3)"
    )
    assert not real.join("b.pt").exists()


def test_digits_sharded_to_s3_and_read_back(s3_store, ray_local, tmp_path):
    from launch.stages.shard import run_shard
    from pipelines.config import config_from_dict
    from pipelines.data.manifest import read_manifest

    from shard_fixtures import make_loader

    out = f"{s3_store}/shards-{uuid.uuid4().hex[:6]}/digits"
    raw = {
        "shard": {
            "source": {"kind": "digits", "image_size": 16},
            "output": out,
            "samples_per_shard": 600,
            "image_format": "png",
            "val_fraction": 0.2,
        }
    }
    summary = run_shard(config_from_dict(raw), progress=False)
    assert summary["num_shards_written"] >= 3, summary

    manifest = read_manifest(out)
    assert manifest.num_classes == 10
    names = {e.name for e in locate(out).list_dir()}
    assert "manifest.json" in names and "train-000000.tar" in names
    assert not any(n.startswith(".") for n in names)  # no temporary objects

    loader = make_loader(out, num_workers=0, micro_batch_size=8, img_size=16)
    batch = next(iter(loader))
    assert tuple(batch["image"].shape) == (8, 3, 16, 16)
    assert batch["label"].shape == (8,) and int(batch["label"].max()) < 10


def test_no_credentials_travel_in_a_runtime_env(tmp_path):
    """Storage credentials stay in each node's own environment (here: set by conftest)."""
    import os

    from launch.jobs import api
    from launch.processes.ray_cluster import worker_runtime_env

    assert os.environ["AWS_SECRET_ACCESS_KEY"]  # present in this process...
    shipped = {**worker_runtime_env()["env_vars"], **api.JOB_ENV}
    leaked = [k for k in shipped if k.startswith(("AWS_", "GOOGLE_", "RAY_AUTH_TOKEN"))]
    assert leaked == []  # ...and in no runtime_env we build
    assert not any(os.environ["AWS_SECRET_ACCESS_KEY"] in v for v in shipped.values())
