"""`cluster:` for real clusters: elastic `num_workers: [min, max]`, node-local scratch, and the
tracking check for remote run storage. Config only: nothing here starts Ray."""

from __future__ import annotations

from pathlib import Path

import pytest

from launch.cli import main
from pipelines.config import config_from_dict, dump_config, load_config
from pipelines.config.loader import read_yaml
from pipelines.errors import ConfigError
from pipelines.run_storage import check_tracking, node_scratch

from train_fixtures import tiny_job, write_yaml


def _problems(raw: dict) -> list[str]:
    with pytest.raises(ConfigError) as err:
        config_from_dict(raw)
    return err.value.problems


def test_a_worker_range_is_elastic_and_num_workers_stays_the_max(tmp_path):
    config = config_from_dict({"cluster": {"num_workers": [1, 2]}})
    cluster = config.cluster
    assert (cluster.num_workers, cluster.min_workers, cluster.elastic) == (2, 1, True)
    assert cluster.worker_range == (1, 2) and cluster.scaling_num_workers == (1, 2)
    assert cluster.restarts_allowed == -1  # a lost node counts against max_failures in Ray
    assert config.grad_accum_steps(cluster.num_workers) >= 1  # int where an int is expected

    path = tmp_path / "dumped.yaml"
    path.write_text(dump_config(config))
    assert read_yaml(path)["cluster"]["num_workers"] == [1, 2]
    assert "min_workers" not in read_yaml(path)["cluster"]
    assert load_config(path) == config

    fixed = config_from_dict({"cluster": {"num_workers": 4, "max_failures": 2}}).cluster
    assert (fixed.num_workers, fixed.elastic, fixed.scaling_num_workers) == (4, False, 4)
    assert fixed.worker_range == (4, 4) and fixed.restarts_allowed == 2
    assert read_yaml(_dump(tmp_path, fixed))["cluster"]["num_workers"] == 4

    overridden = load_config(write_yaml({}, tmp_path / "e.yaml"), ["cluster.num_workers=[1, 2]"])
    assert overridden.cluster.worker_range == (1, 2)


def _dump(tmp_path: Path, cluster) -> Path:
    path = tmp_path / "cluster.yaml"
    path.write_text(dump_config(config_from_dict({"cluster": cluster.model_dump()})))
    return Path(path)


def test_bad_ranges_are_one_line_each():
    batch = {"global_batch_size": 32, "micro_batch_size": 8}
    assert _problems({"cluster": {"num_workers": [1, 3]}, "train": batch}) == [
        "cluster.num_workers=[1, 3]: world size 3 cannot split train.global_batch_size=32 "
        "(train.micro_batch_size=8 x w must divide it for every w in the range)"
    ]
    assert _problems({"cluster": {"num_workers": [2, 6]}, "train": batch}) == [
        "cluster.num_workers=[2, 6]: world sizes 3, 5, 6 cannot split "
        "train.global_batch_size=32 (train.micro_batch_size=8 x w must divide it for every "
        "w in the range)"
    ]
    assert _problems({"cluster": {"num_workers": [3, 1]}}) == [
        "cluster.num_workers=[3, 1]: the minimum must not exceed the maximum"
    ]
    assert _problems({"cluster": {"num_workers": [1, 2, 4]}}) == [
        "cluster.num_workers=[1, 2, 4]: expected a worker count or [min, max] (two integers)"
    ]
    fixed_accum = {**batch, "grad_accum_steps": 2}
    (problem,) = _problems({"cluster": {"num_workers": [1, 2]}, "train": fixed_accum})
    assert problem.startswith("train.grad_accum_steps=2 is fixed, but cluster.num_workers=[1, 2]")


def test_check_config_names_the_world_size_that_cannot_split_the_batch(tmp_path, capsys):
    raw = tiny_job(tmp_path / "shards", tmp_path, cluster={"num_workers": [1, 3]})
    code = main(["check-config", "-c", str(write_yaml(raw, tmp_path / "config.yaml"))])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == [
        "error: cluster.num_workers=[1, 3]: world size 3 cannot split "
        "train.global_batch_size=32 (train.micro_batch_size=16 x w must divide it for every "
        "w in the range)"
    ]
    raw["cluster"]["num_workers"] = [1, 2]
    assert main(["check-config", "-c", str(write_yaml(raw, tmp_path / "ok.yaml"))]) == 0
    assert "num_workers:\n  - 1\n  - 2\n" in capsys.readouterr().out


def test_local_scratch_is_per_node_and_local(tmp_path):
    template = str(tmp_path / "scratch" / "{node_id}")
    cluster = config_from_dict({"cluster": {"local_scratch": template}}).cluster
    a, b = node_scratch(cluster, "node-a"), node_scratch(cluster, "node-b")
    assert a == tmp_path / "scratch" / "node-a" and a.is_dir()
    assert b == tmp_path / "scratch" / "node-b" and a != b

    default = node_scratch(config_from_dict({}).cluster, "n1")
    assert default.is_dir() and default.parts[-2:] == ("vitpipe-scratch", "n1")

    assert _problems({"cluster": {"local_scratch": "s3://bucket/scratch"}}) == [
        "cluster.local_scratch='s3://bucket/scratch' must be a path on each node's own disk "
        "(a staging area); run storage, which may be a URI, is the run dir"
    ]
    assert _problems({"cluster": {"local_scratch": "/x/{rank}"}}) == [
        "cluster.local_scratch='/x/{rank}': the only placeholder is {node_id}"
    ]


def test_a_remote_run_dir_needs_a_tracking_server(tmp_path):
    remote = {"run_dir": "s3://bucket/runs/tiny"}
    sqlite = config_from_dict({**remote, "tracking": {"uri": "sqlite:///mlflow.db"}})
    with pytest.raises(ConfigError) as err:
        check_tracking(sqlite)
    assert err.value.problems == [
        "tracking.uri='sqlite:///mlflow.db' is a file on whichever node runs rank 0, but the "
        "run dir s3://bucket/runs/tiny is remote storage: use an MLflow server every node "
        "reaches (tracking.uri=http(s)://HOST:PORT) or tracking.enabled=false"
    ]
    check_tracking(config_from_dict({**remote, "tracking": {"uri": "http://10.0.0.5:5000"}}))
    check_tracking(config_from_dict({**remote, "tracking": {"enabled": False}}))
    check_tracking(config_from_dict({"run_dir": str(tmp_path / "run")}))  # local: sqlite is fine


def test_pretrain_refuses_sqlite_tracking_with_a_remote_run_dir_before_launch(tmp_path, capsys):
    raw = tiny_job(tmp_path / "no-shards-needed", tmp_path)
    config = write_yaml(raw, tmp_path / "config.yaml")
    code = main(["pretrain", "-c", str(config), "--run-dir", "s3://bucket/runs/tiny"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert (
        err[0].startswith("error: tracking.uri='sqlite:///") and "s3://bucket/runs/tiny" in err[0]
    )
    assert not (tmp_path / "mlflow.db").exists() and not Path("s3:").exists()
