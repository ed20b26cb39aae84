"""Shared fixtures: loopback-only Ray, an S3-compatible server on 127.0.0.1, skipping GPU tests
where CUDA is absent."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from s3_server import S3Server

from launch.processes.ports import free_loopback_port

# Ray binds 127.0.0.1 only; set before any test imports ray.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# The session's object store (`s3_store`), seen the way a cloud node sees its own: endpoint and
# credentials in the process environment. Set here, before any Ray starts, so that every Ray node
# and worker the tests start inherits them (nothing ships them in a runtime_env), and so that no
# test can ever reach a real AWS account. The server itself starts on first use.
S3_PORT = free_loopback_port()
os.environ.update(
    AWS_ENDPOINT_URL=f"http://127.0.0.1:{S3_PORT}",
    AWS_ACCESS_KEY_ID="vitpipe-test",
    AWS_SECRET_ACCESS_KEY="vitpipe-test-secret",
    AWS_DEFAULT_REGION="us-east-1",
    AWS_EC2_METADATA_DISABLED="true",
)
for _name in ("AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
    os.environ.pop(_name, None)
S3_BUCKET = "vitpipe-test"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        # The marker, not `"gpu" in item.keywords`: keywords also hold every parent directory's
        # name and substrings of test names (a checkout in .../gpu/ skipped every test).
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def process_group():
    """A one-process gloo group for the life of the session, as `launchers.run_local` keeps it
    (DeepSpeed caches the group); a FileStore, as run_local uses: no listening socket."""
    import torch.distributed as dist

    from launch.processes.loopback import file_init_method
    from pipelines.distributed import DistContext

    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_loopback_port()))
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
        dist.init_process_group("gloo", init_method=file_init_method(), rank=0, world_size=1)
    return DistContext()


@pytest.fixture(scope="session")
def ray_local():
    """One loopback-only local Ray for the whole session (starting Ray costs seconds)."""
    import ray

    from launch.processes.ray_cluster import connect
    from pipelines.config import ClusterSection

    if not ray.is_initialized():
        connect(ClusterSection(), num_cpus=2)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def fractal_shards(tmp_path_factory, ray_local):
    """A small real shard set (10 classes x 40 fractal images at 32 px, 10% val)."""
    from launch.stages.shard import run_shard
    from pipelines.config import config_from_dict

    out = tmp_path_factory.mktemp("shards") / "fractal"
    config = config_from_dict(
        {
            "shard": {
                "source": {
                    "kind": "fractal",
                    "num_classes": 10,
                    "images_per_class": 40,
                    "image_size": 32,
                    "num_points": 2000,
                },
                "output": str(out),
                "samples_per_shard": 60,
                "image_format": "png",
                "val_fraction": 0.1,
            },
            "tracking": {"enabled": False},
        }
    )
    run_shard(config, progress=False)
    return out


@pytest.fixture(scope="session")
def digits_shards(tmp_path_factory, ray_local):
    """scikit-learn's 1797 real digits at 32 px, 20% val (stratified)."""
    from launch.stages.shard import run_shard
    from pipelines.config import config_from_dict

    out = tmp_path_factory.mktemp("digits") / "shards"
    raw = {
        "shard": {
            "source": {"kind": "digits", "image_size": 32},
            "output": str(out),
            "samples_per_shard": 500,
            "image_format": "png",
            "val_fraction": 0.2,
        },
        "tracking": {"enabled": False},
    }
    run_shard(config_from_dict(raw), progress=False)
    return out


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A real S3-compatible server (moto's, threaded, in this process) on 127.0.0.1 with one
    bucket, logging every request it answers (`S3Server.requests_since`)."""
    import boto3

    server = S3Server(S3_PORT).start()
    try:
        boto3.client("s3").create_bucket(Bucket=S3_BUCKET)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_store(s3_server: S3Server) -> str:
    """`s3://<bucket>` on the session's server; tests write under their own prefix of it."""
    return f"s3://{S3_BUCKET}"
