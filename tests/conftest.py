"""Shared fixtures: loopback-only Ray, skipping GPU tests where CUDA is absent."""

from __future__ import annotations

import os

import pytest

# Ray binds 127.0.0.1 only; set before any test imports ray.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


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
def ray_local():
    """One loopback-only local Ray for the whole session (starting Ray costs seconds)."""
    import ray

    from launch.ray_cluster import connect
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
            }
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
        }
    }
    run_shard(config_from_dict(raw), progress=False)
    return out
