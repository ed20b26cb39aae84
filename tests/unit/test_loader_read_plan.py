"""The loader's plan: pure functions, no I/O — coverage, disjointness, remainder, resume splits."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from pipelines.data.loader.read_plan import (
    Segment,
    Topology,
    plan_eval,
    plan_train_epoch,
    shard_order,
    shuffle_buffer_order,
    train_batches_per_rank,
    worker_batches_before,
)
from pipelines.data.manifest import ShardInfo
from pipelines.errors import DataError

COUNTS = [7, 13, 3, 20, 9]
SHARDS = tuple(ShardInfo(f"train-{i:06d}.tar", n, 0, "") for i, n in enumerate(COUNTS))


def _all_consumers(plan):
    topo = plan.topology
    return [
        plan.consumer(r, w) for r in range(topo.world_size) for w in range(topo.workers_per_rank)
    ]


@pytest.mark.parametrize("n,buffer", [(0, 5), (1, 5), (10, 0), (10, 1), (50, 7), (30, 100)])
def test_shuffle_buffer_order_is_a_bounded_permutation(n, buffer):
    out = shuffle_buffer_order(n, buffer, seed=3)
    assert sorted(out.tolist()) == list(range(n))
    assert all(out[j] < j + max(buffer, 1) for j in range(n))
    assert np.array_equal(out, shuffle_buffer_order(n, buffer, seed=3))
    if buffer > 1 and n > 10:
        assert not np.array_equal(out, np.arange(n))


@pytest.mark.parametrize(
    "world,workers,batch", [(1, 0, 4), (2, 2, 4), (3, 1, 2), (2, 3, 1), (1, 2, 8)]
)
def test_train_plan_is_disjoint_equal_and_drops_the_stream_tail(world, workers, batch):
    topo = Topology(world, workers, batch, shuffle_buffer=6)
    plan = plan_train_epoch(SHARDS, seed=1, epoch=2, topology=topo)
    consumers = _all_consumers(plan)
    total = sum(COUNTS)
    per = (total // topo.num_consumers) // batch * batch
    assert plan.per_consumer == per and plan.dropped == total - per * topo.num_consumers
    assert all(c.num_real == per and c.num_batches == per // batch for c in consumers)
    assert plan.batches_per_rank == topo.workers_per_rank * per // batch
    got = np.concatenate([c.positions for c in consumers])
    # Consumer ranges are contiguous and in consumer order; the tail of the stream is dropped.
    assert np.array_equal(got, np.arange(per * topo.num_consumers))
    for c in consumers:
        assert sorted(c.order.tolist()) == list(range(per))


def test_shard_order_depends_on_seed_and_epoch_only():
    assert shard_order(50, seed=0, epoch=0) == shard_order(50, seed=0, epoch=0)
    assert shard_order(50, seed=0, epoch=0) != shard_order(50, seed=0, epoch=1)
    assert shard_order(50, seed=0, epoch=0) != shard_order(50, seed=1, epoch=0)
    assert sorted(shard_order(50, seed=4, epoch=9)) == list(range(50))


def test_epoch_stream_locates_samples_in_shuffled_shard_order():
    plan = plan_train_epoch(SHARDS, seed=0, epoch=0, topology=Topology(1, 0, 1, 0))
    order = plan.stream.order
    assert plan.stream.locate(0) == (order[0], 0)
    assert plan.stream.locate(COUNTS[order[0]]) == (order[1], 0)
    groups = plan.stream.group(np.arange(sum(COUNTS)))
    assert [g[0] for g in groups] == [i for i in order if COUNTS[i]]
    assert [len(g[1]) for g in groups] == [COUNTS[i] for i in order]


def test_round_robin_bookkeeping():
    # Rank batches 0..6 with 3 workers come from workers 0,1,2,0,1,2,0.
    assert [worker_batches_before(7, w, 3) for w in range(3)] == [3, 2, 2]
    assert [worker_batches_before(0, w, 3) for w in range(3)] == [0, 0, 0]
    assert [worker_batches_before(1, w, 1) for w in range(1)] == [1]


def test_consumed_counts_every_rank_and_worker():
    topo = Topology(2, 2, 4, shuffle_buffer=5)
    plan = plan_train_epoch(SHARDS, seed=0, epoch=0, topology=topo)
    for position in range(plan.batches_per_rank + 1):
        consumed = plan.consumed(position)
        assert len(consumed) == len(set(consumed.tolist())) == position * 4 * 2


def test_resplit_after_topology_change_never_repeats_a_sample():
    old = Topology(2, 2, 2, shuffle_buffer=5)
    first = plan_train_epoch(SHARDS, seed=0, epoch=3, topology=old)
    consumed = set(first.consumed(3).tolist())
    for new in (Topology(1, 0, 2, 5), Topology(3, 1, 1, 0), Topology(1, 2, 4, 3)):
        plan = plan_train_epoch(SHARDS, seed=0, epoch=3, topology=new, history=[Segment(old, 3)])
        assert set(plan.pool.tolist()) == set(range(sum(COUNTS))) - consumed
        read = np.concatenate([c.positions for c in _all_consumers(plan)]).tolist()
        assert len(read) == len(set(read)) and not consumed & set(read)
        assert plan.dropped < new.num_consumers * new.micro_batch_size
        assert len(read) + plan.dropped == len(plan.pool)
        # Chained: a second change after some batches of the first re-split.
        if plan.batches_per_rank >= 2:
            again = plan_train_epoch(
                SHARDS,
                seed=0,
                epoch=3,
                topology=old,
                history=[Segment(old, 3), Segment(new, 2)],
            )
            seen = consumed | set(plan.consumed(2).tolist())
            later = np.concatenate([c.positions for c in _all_consumers(again)]).tolist()
            assert not seen & set(later) and len(later) == len(set(later))


def test_impossible_plan_names_the_numbers():
    with pytest.raises(DataError) as err:
        plan_train_epoch(SHARDS, seed=0, epoch=0, topology=Topology(4, 4, 4, 0))
    msg = str(err.value)
    assert "52 samples" in msg and "world_size=4" in msg and "micro_batch_size=4" in msg
    assert "at least 64" in msg and "data.num_workers" in msg


@pytest.mark.parametrize("world,workers", [(2, 0), (3, 2), (4, 1)])
def test_eval_plan_covers_every_sample_once_with_equal_batches(world, workers):
    shards = SHARDS[:2]  # 20 samples
    topo = Topology(world, workers, 3, shuffle_buffer=0)
    plan = plan_eval(shards, topology=topo)
    consumers = _all_consumers(plan)
    got = np.concatenate([c.positions for c in consumers])
    assert np.array_equal(got, np.arange(20))
    sizes = [c.num_real for c in consumers]
    assert max(sizes) - min(sizes) <= 1
    assert len({c.num_batches for c in consumers}) == 1
    assert all(c.num_slots >= c.num_real for c in consumers)


@pytest.mark.parametrize("world,workers,batch,repeats", [(2, 2, 4, 3), (1, 0, 6, 2), (3, 1, 2, 4)])
def test_repeated_aug_keeps_the_epoch_length_in_disjoint_repeat_groups(
    world, workers, batch, repeats
):
    plain = plan_train_epoch(SHARDS, seed=1, epoch=2, topology=Topology(world, workers, batch, 6))
    topo = Topology(world, workers, batch, 6, repeats=repeats)
    plan = plan_train_epoch(SHARDS, seed=1, epoch=2, topology=topo)
    assert plan.batches_per_rank == plain.batches_per_rank  # same steps per epoch
    heads = []
    for c, whole in zip(_all_consumers(plan), _all_consumers(plain), strict=True):
        assert c.num_real == whole.num_real and c.repeats == repeats
        assert set(c.positions.tolist()) <= set(whole.positions.tolist())  # its own range
        assert len(c.positions) == -(-c.num_real // repeats)
        # Copies are consecutive: slot j is copy j % repeats of sample order[j].
        full = c.num_real // repeats * repeats
        groups = c.order[:full].reshape(-1, repeats)
        assert (groups == groups[:, :1]).all()
        assert len(set(groups[:, 0].tolist())) == len(groups)
        heads += c.positions.tolist()
    assert len(heads) == len(set(heads))  # no sample in two groups
    # Consumed positions count each group once, and a re-split never repeats one of them.
    consumed = plan.consumed(2)
    assert len(consumed) == len(set(consumed.tolist()))
    after = plan_train_epoch(
        SHARDS, seed=1, epoch=2, topology=Topology(1, 0, 2, 0), history=[Segment(topo, 2)]
    )
    read = np.concatenate([c.positions for c in _all_consumers(after)]).tolist()
    assert not set(read) & set(consumed.tolist())


def test_loader_states_written_before_repeated_aug_mean_no_repeats():
    old = {"world_size": 2, "num_workers": 1, "micro_batch_size": 4, "shuffle_buffer": 8}
    assert Topology.from_dict(old) == Topology(2, 1, 4, 8)
    assert Topology(2, 1, 4, 8).to_dict() == old  # unchanged format when off
    assert Topology.from_dict(Topology(2, 1, 4, 8, repeats=3).to_dict()).repeats == 3


def test_batches_per_rank_before_any_loader_follow_the_plans_split_rule():
    shards = [ShardInfo(f"train-{i:06d}.tar", n, 1, "0" * 64) for i, n in enumerate([97, 60, 3])]
    for world, workers, micro in [(1, 0, 4), (2, 1, 16), (3, 2, 5), (4, 4, 1)]:
        topology = Topology(world, workers, micro, 0)
        plan = plan_train_epoch(shards, seed=0, epoch=0, topology=topology)
        assert train_batches_per_rank(160, topology) == plan.batches_per_rank


def test_the_read_plan_imports_without_torch():
    code = "import sys\nimport pipelines.data.loader.read_plan\nprint('torch' in sys.modules)\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
