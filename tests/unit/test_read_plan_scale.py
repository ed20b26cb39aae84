"""The epoch plan as ranges: the same plan as vitpipe 0.2 on random cases (beyond the recorded
golden ones), a size that does not grow with the dataset, excluded samples that are never read,
and a mix of shard sets drawn in proportion, all resuming at another topology without repeats."""

from __future__ import annotations

import pickle
import random
from collections import Counter

import numpy as np
import pytest
import read_plan_0_2 as reference

from pipelines.data.loader.epoch_stream import multivariate_hypergeometric
from pipelines.data.loader.read_plan import (
    Segment,
    SourceShare,
    Topology,
    plan_train_epoch,
    worker_batches_before,
)
from pipelines.data.manifest import ShardInfo
from pipelines.errors import DataError


def _shards(counts) -> list[ShardInfo]:
    return [ShardInfo(f"train-{i:06d}.tar", n, 1, "0" * 64) for i, n in enumerate(counts)]


def _consumers(plan):
    topo = plan.topology
    return [
        plan.consumer(r, w) for r in range(topo.world_size) for w in range(topo.workers_per_rank)
    ]


def _read(plan) -> list[tuple[int, int]]:
    """Every (shard, offset) the plan's consumers read, slot by slot (repeat copies once)."""
    out = []
    for c in _consumers(plan):
        for shard, offsets in plan.stream.group(c.positions):
            out += [(shard, int(o)) for o in offsets]
    return out


def _random_topology(rng: random.Random, repeats: int) -> dict:
    return {
        "world_size": rng.choice([1, 2, 3, 5]),
        "num_workers": rng.choice([0, 1, 2, 3]),
        "micro_batch_size": rng.choice([1, 2, 3, 4]),
        "shuffle_buffer": rng.choice([0, 1, 2, 7, 100]),
        "repeats": repeats,
    }


def test_the_range_plan_equals_the_position_array_plan_on_random_resumes():
    """300 random (shards, topology, chained history) cases against the frozen 0.2 plan: every
    consumer's positions and order, the pool, the drop."""
    rng = random.Random(2026)
    checked = 0
    while checked < 300:
        shards = _shards([rng.randint(0, 60) for _ in range(rng.randint(1, 12))])
        seed, epoch, repeats = rng.randint(0, 2**31), rng.randint(0, 5), rng.choice([1, 1, 2, 3])
        topo = _random_topology(rng, repeats)
        history: list[tuple[dict, int]] = []
        try:
            for _ in range(rng.choice([0, 1, 2, 3])):
                old = _random_topology(rng, repeats)
                before = [Segment(reference.Topology(**t), p) for t, p in history]
                p = reference.plan_train_epoch(
                    shards, seed=seed, epoch=epoch, topology=reference.Topology(**old),
                    history=before,
                )  # fmt: skip
                history.append((old, rng.randint(0, p.batches_per_rank)))
            want = reference.plan_train_epoch(
                shards, seed=seed, epoch=epoch, topology=reference.Topology(**topo),
                history=[reference.Segment(reference.Topology(**t), p) for t, p in history],
            )  # fmt: skip
        except DataError:
            continue
        got = plan_train_epoch(
            shards, seed=seed, epoch=epoch, topology=Topology(**topo),
            history=[Segment(Topology(**t), p) for t, p in history],
        )  # fmt: skip
        assert (got.per_consumer, got.dropped, got.pool_size) == (
            want.per_consumer,
            want.dropped,
            len(want.pool),
        )
        assert np.array_equal(got.pool, want.pool)
        for a, b in zip(_consumers(got), _consumers(want), strict=True):
            assert np.array_equal(a.positions, b.positions) and np.array_equal(a.order, b.order)
        checked += 1


def test_a_billion_sample_plan_is_as_small_as_its_shard_list():
    """10^9 samples, 1024 x 8 consumers, resumed mid-epoch at 896 ranks: the plan a worker
    receives is the size of a 10^7-sample one (it grows with the shards, not the samples), and
    the resumed consumers read disjoint samples that the first segment did not (checked at
    10^7, where a consumer's own samples are cheap to list)."""
    topo, new = Topology(1024, 8, 64, 1000), Topology(896, 8, 64, 1000)
    sizes = {}
    for total in (10**9, 10**7):
        shards = _shards([total // 10_000] * 10_000)
        plan = plan_train_epoch(shards, seed=0, epoch=1, topology=topo)
        half = plan.batches_per_rank // 2
        resumed = plan_train_epoch(
            shards, seed=0, epoch=1, topology=new, history=[Segment(topo, half)]
        )
        sizes[total] = len(pickle.dumps(plan)), len(pickle.dumps(resumed))
    assert sizes[10**9][0] < 1.01 * sizes[10**7][0] and sizes[10**9][1] < 1.01 * sizes[10**7][1]
    assert max(sizes[10**9]) < 2**20
    assert resumed.consumed_before == 1024 * half * 64
    # Two neighbouring new consumers, and the old consumers whose ranges they overlap.
    a, b = resumed.consumer(447, 7), resumed.consumer(448, 0)
    assert len(a.positions) == len(b.positions) == resumed.per_consumer
    assert a.positions[-1] < b.positions[0]
    for c in range(a.positions[0] // plan.per_consumer, b.positions[-1] // plan.per_consumer + 1):
        old = plan.consumer(*divmod(c, 8))
        gone = old.positions[old.order[: worker_batches_before(half, c % 8, 8) * 64]]
        assert not np.isin(gone, a.positions).any() and not np.isin(gone, b.positions).any()
        kept = np.setdiff1d(old.positions, gone)
        inside = kept[(kept >= a.positions[0]) & (kept <= b.positions[-1])]
        assert np.isin(inside, np.concatenate([a.positions, b.positions])).all()


def test_excluded_samples_are_never_read_and_resume_stays_exact():
    counts = [7, 13, 3, 20, 9, 0, 11]
    shards = _shards(counts)
    exclude = {1: [0, 5, 12], 3: list(range(0, 20, 3)), 6: [10]}
    gone = {(s, o) for s, offs in exclude.items() for o in offs}
    topo = Topology(2, 2, 2, 5, repeats=1)
    plan = plan_train_epoch(shards, seed=3, epoch=1, topology=topo, exclude=exclude)
    assert plan.stream.num_samples == sum(counts) - len(gone)
    assert len({len(c.order) for c in _consumers(plan)}) == 1  # equal batches per rank
    first = _read(plan)
    assert not gone & set(first) and len(first) == len(set(first))
    # Stopped after 2 batches per rank, resumed on 3 ranks x 1 worker, then 1 x 0.
    consumed = {plan.stream.locate(int(p)) for p in plan.consumed(2)}
    resumed = plan_train_epoch(
        shards, seed=3, epoch=1, topology=Topology(3, 1, 2, 0), history=[Segment(topo, 2)],
        exclude=exclude,
    )  # fmt: skip
    rest = _read(resumed)
    assert not gone & set(rest) and not consumed & set(rest) and len(rest) == len(set(rest))
    assert len(consumed) + len(rest) + resumed.dropped == plan.stream.num_samples
    # Every sample an epoch may read is read by exactly one of the two segments, or dropped.
    everything = {(s, o) for s, n in enumerate(counts) for o in range(n)} - gone
    assert consumed | set(rest) <= everything
    with pytest.raises(DataError, match="offsets 0..2"):
        plan_train_epoch(shards, seed=3, epoch=1, topology=topo, exclude={2: [3]})


def _mix(counts_a, counts_b, choose_a, choose_b):
    shards = _shards([*counts_a, *counts_b])
    shares = [
        SourceShare(0, len(counts_a), choose_a),
        SourceShare(len(counts_a), len(counts_b), choose_b),
    ]
    return shards, shares


def test_a_mix_streams_each_sources_share_without_repeats_where_it_is_not_repeated():
    """3:1 over two sets of 120 samples: the first repeats (180 of 120), the second is drawn
    without replacement (60 of 120); other shards each epoch, the same for a given seed."""
    shards, shares = _mix([30, 40, 50], [60, 25, 35], 180, 60)
    topo = Topology(2, 2, 4, 10)
    per_epoch = []
    for epoch in (0, 1):
        plan = plan_train_epoch(shards, seed=5, epoch=epoch, topology=topo, mix=shares)
        assert plan.stream.num_samples == 240
        read = _read(plan)
        source = Counter(shard >= 3 for shard, _ in read)
        assert abs(source[False] - 180) + abs(source[True] - 60) <= plan.dropped
        b_samples = [x for x in read if x[0] >= 3]
        assert len(b_samples) == len(set(b_samples))  # not repeated: each at most once
        a_counts = Counter(x for x in read if x[0] < 3)
        assert max(a_counts.values()) == 2 and len(a_counts) >= 120 - plan.dropped
        per_epoch.append(sorted(b_samples))
        again = plan_train_epoch(shards, seed=5, epoch=epoch, topology=topo, mix=shares)
        assert _read(again) == read
    assert per_epoch[0] != per_epoch[1]


def test_a_mix_resumes_at_another_topology_exactly():
    shards, shares = _mix([30, 40, 50], [60, 25, 35], 180, 60)
    topo = Topology(2, 2, 4, 10, repeats=2)
    plan = plan_train_epoch(shards, seed=5, epoch=2, topology=topo, mix=shares)
    consumed = set(plan.consumed(3).tolist())
    resumed = plan_train_epoch(
        shards, seed=5, epoch=2, topology=Topology(1, 3, 2, 0, repeats=2), mix=shares,
        history=[Segment(topo, 3)],
    )  # fmt: skip
    later = np.concatenate([c.positions for c in _consumers(resumed)]).tolist()
    assert not consumed & set(later) and len(later) == len(set(later))
    assert set(resumed.pool.tolist()) == set(range(240)) - consumed


def test_a_mix_of_one_source_taken_once_is_the_plain_plan():
    shards = _shards([7, 13, 3, 20, 9])
    topo = Topology(2, 1, 2, 4)
    plain = plan_train_epoch(shards, seed=1, epoch=4, topology=topo)
    mixed = plan_train_epoch(shards, seed=1, epoch=4, topology=topo, mix=[SourceShare(0, 5, 52)])
    assert _read(mixed) == _read(plain)


def test_the_hypergeometric_split_keeps_every_bin_and_total_also_past_a_billion():
    rng = np.random.default_rng(0)
    counts = np.array([5, 0, 3, 10**9, 2 * 10**9, 7])
    takes = multivariate_hypergeometric(counts, 10**9, rng)
    assert takes.sum() == 10**9 and (takes <= counts).all() and (takes >= 0).all()
    small = multivariate_hypergeometric(np.array([4, 4, 4, 4]), 16, rng)
    assert small.tolist() == [4, 4, 4, 4]
    draws = np.array([multivariate_hypergeometric(np.array([30, 10]), 8, rng) for _ in range(400)])
    assert abs(draws[:, 0].mean() - 6.0) < 0.3  # E = 8 x 30/40
