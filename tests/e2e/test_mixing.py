"""Pretraining on a mix of two fractal shard sets, weights 3:1, on 2 Ray workers: each epoch
takes each source's share (the smaller-share source drawn without replacement), a run stopped
mid-epoch and resumed on 1 worker reads exactly the rest of the epoch's plan (no sample repeated
or skipped), class ids of the second source come after the first's (`mix_classes: offset`), and
metrics.jsonl and MLflow count the samples seen per source across the resume."""

from __future__ import annotations

import json
import tarfile
from collections import Counter
from pathlib import Path

import pytest

from launch.stages.training import run_training_stage
from pipelines.data.loader.read_plan import Segment, Topology, plan_train_epoch
from pipelines.data.loader.train_sources import open_train_sources

from train_fixtures import as_config, tiny_job, train_losses

pytestmark = pytest.mark.slow

STOP, TOTAL, MICRO = 6, 16, 16


@pytest.fixture(scope="module")
def second_fractal_set(tmp_path_factory, ray_local):
    """Another fractal set (other IFS, seed 7): 10 classes x 15 images, no val split."""
    from launch.stages.shard import run_shard
    from pipelines.config import config_from_dict

    out = tmp_path_factory.mktemp("mix") / "fractal_b"
    source = {"kind": "fractal", "num_classes": 10, "images_per_class": 15, "image_size": 32}
    shard = {"output": str(out), "samples_per_shard": 50, "image_format": "png"}
    config = {"shard": {**shard, "source": {**source, "num_points": 2000, "seed": 7}}}
    run_shard(config_from_dict({**config, "tracking": {"enabled": False}}), progress=False)
    return out


def _reads(run_dir: Path) -> dict[int, Counter]:
    """(source, key) read per epoch, from the sample-key audit of every rank."""
    found: dict[int, Counter] = {}
    for path in sorted((run_dir / "sample_keys").glob("rank*.jsonl")):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            pairs = zip(record["sources"], record["keys"], strict=True)
            found.setdefault(record["epoch"], Counter()).update(pairs)
    return found


def _planned(config, history: list[Segment], topology: Topology) -> Counter:
    """(source, key) of the samples the plan gives epoch 0: what the earlier segments consumed
    and every consumer of the last one reads."""
    sources = open_train_sources(config.data)
    shards, firsts = sources.shards("train"), sources.first_shards("train")
    roots = [s.manifest.shards_root(s.root, "train") for s in sources.sources]
    keys = []
    for index, shard in enumerate(shards):
        source = max(i for i, first in enumerate(firsts) if first <= index)
        with tarfile.open(Path(roots[source].path) / shard.name) as tar:
            names = [m.name.split(".")[0] for m in tar.getmembers()]
        keys.append((source, list(dict.fromkeys(names))))
    kw = dict(seed=config.train.seed, epoch=0, mix=sources.shares("train", {}))
    positions = []
    for i, segment in enumerate(history):
        plan = plan_train_epoch(shards, topology=segment.topology, history=history[:i], **kw)
        positions += plan.consumed(segment.position).tolist()
    plan = plan_train_epoch(shards, topology=topology, history=history, **kw)
    for rank in range(topology.world_size):
        positions += plan.consumer(rank, 0).positions.tolist()
    planned = Counter()
    for position in positions:
        shard, offset = plan.stream.locate(position)
        source, names = keys[shard]
        planned[(source, names[offset])] += 1
    return planned


def test_a_three_to_one_mix_resumed_on_one_worker_reads_exactly_its_plan(
    fractal_shards, second_fractal_set, tmp_path
):
    mix = [
        {"shards": str(fractal_shards), "weight": 3.0, "name": "fractal_a"},
        {"shards": str(second_fractal_set), "weight": 1.0, "name": "fractal_b"},
    ]
    raw = tiny_job(
        fractal_shards,
        tmp_path,
        data={"train_shards": mix, "mix_classes": "offset"},
        train={"total_steps": TOTAL, "record_sample_keys": True, "micro_batch_size": MICRO},
        checkpoint={"every_n_steps": None},
    )
    run_dir = tmp_path / "run"
    first = run_training_stage(as_config(raw), run_dir=run_dir, progress=False, stop_at_step=STOP)
    assert first["status"] == "stopped" and first["world_size"] == 2
    assert first["num_classes"] == 20  # 10 + 10 with mix_classes: offset

    raw["cluster"]["num_workers"] = 1
    second = run_training_stage(as_config(raw), run_dir=run_dir, launcher="local", progress=False)
    assert second["status"] == "finished" and second["steps"] == TOTAL
    assert Path(second["resumed_from"]).name == f"step_{STOP:07d}"

    config = as_config(raw)
    old, new = Topology(2, 1, MICRO, 50), Topology(1, 1, MICRO, 50)
    reads = _reads(run_dir)
    # Epoch 0 is exactly its plan: 6 steps on 2 workers, then the rest re-split over 1.
    assert reads[0] == _planned(config, [Segment(old, STOP)], new)
    # 510 samples an epoch (360 + 150): a's share 383 (it repeats), b's 127 (drawn).
    per_source = Counter(source for source, _ in reads[0].elements())
    assert abs(per_source[0] - 383) <= 2 * MICRO and abs(per_source[1] - 127) <= 2 * MICRO
    assert max(n for (source, _), n in reads[0].items() if source == 1) == 1
    assert max(n for (source, _), n in reads[0].items() if source == 0) == 2

    seen = Counter(source for epoch in reads.values() for source, _ in epoch.elements())
    last = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in last if "data/samples_seen/fractal_a" in r][-1]
    assert last["step"] == TOTAL and last["samples_seen"] == TOTAL * 32
    assert (last["data/samples_seen/fractal_a"], last["data/samples_seen/fractal_b"]) == (
        seen[0],
        seen[1],
    )
    assert sorted(train_losses(run_dir)) == list(range(1, TOTAL + 1))

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=second["mlflow_tracking_uri"])
    metrics = client.get_run(second["mlflow_run_id"]).data.metrics
    assert metrics["data/samples_seen/fractal_b"] == seen[1]
