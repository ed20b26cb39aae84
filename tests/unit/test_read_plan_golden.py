"""The epoch plan is pinned bit for bit to what vitpipe 0.2 computed (before plans became
ranges), on the cases in tests/fixtures/read_plan_golden.json: the same samples per consumer in
the same order, with repeated augmentation, resumes at other topologies (history) and eval
plans, so a checkpoint written by an earlier version resumes exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from make_read_plan_golden import digest, plan_of

from pipelines.data.loader.read_plan import Segment, Topology

GOLDEN = json.loads((Path(__file__).parents[1] / "fixtures" / "read_plan_golden.json").read_text())


@pytest.mark.parametrize("case", GOLDEN, ids=[f"case{i}" for i in range(len(GOLDEN))])
def test_the_plan_is_what_earlier_versions_computed(case):
    history = [Segment(Topology(**s["topology"]), s["position"]) for s in case["history"]]
    plan = plan_of(case, history)
    topo = plan.topology
    assert (plan.batches_per_rank, plan.per_consumer, plan.dropped) == (
        case["batches_per_rank"],
        case["per_consumer"],
        case["dropped"],
    )
    got = [
        digest([c.positions, c.order])
        for c in (
            plan.consumer(rank, worker)
            for rank in range(topo.world_size)
            for worker in range(topo.workers_per_rank)
        )
    ]
    assert got == case["consumers"]
