"""Fail fast: a request that no node (or node type the autoscaler can add) fits is one line,
in seconds; otherwise the driver prints the plan."""

from __future__ import annotations

import time

import pytest

from launch.cli import main
from launch.processes.capacity import (
    CapacityError,
    ClusterView,
    NodeType,
    check_capacity,
    describe_plan,
    plan_workers,
    read_cluster,
)
from pipelines.config import config_from_dict

from train_fixtures import tiny_job, write_yaml

CPU_NODE = {"CPU": 8.0, "memory": 3e10, "object_store_memory": 1e10, "node:10.0.0.1": 1.0}
GPU_NODE = {"CPU": 96.0, "GPU": 8.0, "memory": 1e12, "accelerator_type:H100": 1.0}


def _cluster(**values):
    return config_from_dict(
        {"cluster": values, "train": {"global_batch_size": 1680, "micro_batch_size": 1}}
    ).cluster


def _error(cluster, view) -> str:
    with pytest.raises(CapacityError) as err:
        plan_workers(cluster, view)
    assert "\n" not in str(err.value)
    return str(err.value)


def test_what_is_missing_is_named():
    gpus = _cluster(num_workers=4, use_gpu=True)
    assert _error(gpus, ClusterView([CPU_NODE])) == (
        "cluster.num_workers=4 x {CPU: 1, GPU: 1} per worker: no node has GPU; the cluster: "
        "1 node(s): {CPU: 8}"
    )
    big = _cluster(num_workers=2, cpus_per_worker=16.0)
    assert _error(big, ClusterView([CPU_NODE, CPU_NODE])) == (
        "cluster.num_workers=2 x {CPU: 16} per worker: no node has CPU 16 (the largest has 8); "
        "the cluster: 2 node(s): {CPU: 8}, {CPU: 8}"
    )
    custom = _cluster(num_workers=1, resources_per_worker={"TPU": 4.0})
    assert "no node has TPU;" in _error(custom, ClusterView([CPU_NODE, GPU_NODE]))
    too_many = _cluster(num_workers=16, use_gpu=True)
    assert _error(too_many, ClusterView([CPU_NODE, GPU_NODE])) == (
        "cluster.num_workers=16 x {CPU: 1, GPU: 1} per worker: the cluster can hold 8 such "
        "worker(s) (2 node(s), {CPU: 104, GPU: 8} in all); add nodes or lower "
        "cluster.num_workers"
    )


def test_node_types_the_autoscaler_can_add_count():
    gpus = _cluster(num_workers=16, use_gpu=True)
    p5 = NodeType("p5", {"CPU": 192.0, "GPU": 8.0}, max_count=4)
    placement = plan_workers(gpus, ClusterView([CPU_NODE], [p5], autoscaler=True))
    assert (placement.workers, placement.per_node, placement.added) == (16, [], {"p5": 2})

    capped = NodeType("p5", {"CPU": 192.0, "GPU": 8.0}, max_count=1)
    assert _error(gpus, ClusterView([CPU_NODE], [capped], autoscaler=True)).startswith(
        "cluster.num_workers=16 x {CPU: 1, GPU: 1} per worker: the cluster and its autoscaler "
        "can hold 8 such worker(s)"
    )
    cpu_only = NodeType("m5", {"CPU": 16.0}, max_count=10)
    assert _error(gpus, ClusterView([CPU_NODE], [cpu_only], autoscaler=True)).startswith(
        "cluster.num_workers=16 x {CPU: 1, GPU: 1} per worker: no node or node type the "
        "autoscaler can add has GPU;"
    )

    # KubeRay-style: an autoscaler whose node types are not visible is not second-guessed.
    hidden = plan_workers(gpus, ClusterView([CPU_NODE], [], autoscaler=True))
    assert hidden.workers == 16 and "not visible" in hidden.note


def test_an_elastic_range_needs_its_minimum():
    elastic = _cluster(num_workers=[2, 8], use_gpu=True)
    one_node = {"CPU": 16.0, "GPU": 4.0}
    placement = plan_workers(elastic, ClusterView([one_node]))
    assert (placement.workers, placement.per_node) == (4, [4])
    assert placement.note == "elastic: starts with 4 of at most 8 workers"
    assert "can hold 1 such worker(s)" in _error(elastic, ClusterView([{"CPU": 4.0, "GPU": 1.0}]))


def test_the_plan_names_nodes_batch_and_steps(fractal_shards):
    config = config_from_dict(
        {
            "data": {"train_shards": str(fractal_shards), "num_workers": 1},
            "train": {"global_batch_size": 64, "micro_batch_size": 16},
            "cluster": {"num_workers": 2},
        }
    )
    placement = plan_workers(config.cluster, ClusterView([{"CPU": 1.0}, {"CPU": 1.0}]))
    # 360 train samples over 2 ranks x 1 loader worker: 180 -> 11 micro-batches of 16 -> 5 steps
    assert describe_plan(config, placement).splitlines() == [
        "plan: 2 worker(s) on 2 node(s) (workers per live node: 1 + 1)",
        "plan: global batch 64 = micro 16 x accum 2 x world 2; 5 steps per epoch "
        "(360 train samples)",
    ]


def test_four_gpus_on_the_cpu_only_local_cluster_fail_in_seconds(
    ray_local, fractal_shards, tmp_path, capsys
):
    raw = tiny_job(
        fractal_shards,
        tmp_path,
        cluster={"num_workers": 4, "use_gpu": True},
        train={"global_batch_size": 64},
    )
    config = write_yaml(raw, tmp_path / "gpus.yaml")
    start = time.monotonic()
    code = main(["pretrain", "-c", str(config), "--run-dir", str(tmp_path / "run")])
    elapsed = time.monotonic() - start
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 1 and elapsed < 30, (code, elapsed)
    assert len(err) == 1 and "no node has GPU" in err[0], err
    assert err[0].startswith("error: cluster.num_workers=4 x {CPU: 1, GPU: 1} per worker")


def test_node_types_reported_to_the_gcs_are_read(ray_local, fractal_shards):
    """What an autoscaler reports into the GCS (ClusterConfig) is what the check reads."""
    import ray
    from ray.core.generated import autoscaler_pb2

    gcs = ray._private.worker.global_worker.gcs_client
    reported = autoscaler_pb2.ClusterConfig()
    group = reported.node_group_configs.add()
    group.name, group.max_count = "gpu-workers", 2
    group.resources.update({"CPU": 8, "GPU": 4})
    gcs.report_cluster_config(reported.SerializeToString())
    try:
        view = read_cluster()
        assert view.node_types == [NodeType("gpu-workers", {"CPU": 8.0, "GPU": 4.0}, 2)]
        assert view.autoscaler and view.nodes and "GPU" not in view.nodes[0]
        lines: list[str] = []
        config = config_from_dict(
            {
                "data": {"train_shards": str(fractal_shards)},
                "train": {"global_batch_size": 64, "micro_batch_size": 8},
                "cluster": {"num_workers": 8, "use_gpu": True},
            }
        )
        placement = check_capacity(config, echo=lines.append)
        assert placement.added == {"gpu-workers": 2}
        assert lines[0].startswith("plan: 8 worker(s) on 2 node(s)")
    finally:
        gcs.report_cluster_config(autoscaler_pb2.ClusterConfig().SerializeToString())
    assert read_cluster().node_types == []
