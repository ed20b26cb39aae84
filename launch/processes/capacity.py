"""Fail fast: before launch, does the request fit the Ray cluster (and what its autoscaler can
add)? Ray itself would wait forever for a placement group that fits no node.

The request is `cluster.num_workers` (the minimum of an elastic range must fit) workers of one
bundle each (`cpus_per_worker`, a GPU when `use_gpu`, `resources_per_worker`). It is compared
with each live node's total resources and, on an autoscaling cluster, with the node types the
autoscaler can add. Those come from the cluster config in the GCS (`ClusterConfig`, which
autoscalers that report it fill in; Ray Data reads the same) or else from the cluster
launcher's `~/ray_bootstrap_config.yaml` on the head node (what Ray Tune checks too). An
autoscaler whose node types are not visible (KubeRay's) is not second-guessed: the plan says so.

`plan_workers` is pure (tests give it a `ClusterView`); `read_cluster` asks a running Ray.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.config import ClusterSection, StageConfig
from pipelines.data.loader.read_plan import Topology, train_batches_per_rank
from pipelines.data.loader.train_sources import open_train_sources
from pipelines.errors import DataError, VitpipeError

BOOTSTRAP_CONFIG = Path("~/ray_bootstrap_config.yaml")
# Resources every node has that say nothing about what a worker asked for.
_BOOKKEEPING = ("memory", "object_store_memory")


class CapacityError(VitpipeError):
    """The request fits no node of the cluster, or not enough of them."""


@dataclass(frozen=True)
class NodeType:
    """A kind of node an autoscaler can add: resources per node, at most `max_count` (-1: no
    limit). Empty `resources`: not known."""

    name: str
    resources: dict[str, float]
    max_count: int


@dataclass(frozen=True)
class ClusterView:
    nodes: list[dict[str, float]]
    node_types: list[NodeType] = field(default_factory=list)
    autoscaler: bool = False


@dataclass(frozen=True)
class Placement:
    workers: int
    per_node: list[int]  # workers on each live node that gets any
    added: dict[str, int]  # node type -> nodes the autoscaler must add
    note: str = ""


def worker_bundle(cluster: ClusterSection) -> dict[str, float]:
    """The resources one training worker asks Ray for (`launch.processes.launchers.run_ray` asks this)."""
    bundle = {"CPU": cluster.cpus_per_worker, **cluster.resources_per_worker}
    if cluster.use_gpu:
        bundle.setdefault("GPU", 1)
    return {k: float(v) for k, v in bundle.items() if v}


def fits(bundle: dict[str, float], resources: dict[str, float]) -> int:
    """How many bundles fit on a node with these total resources."""
    counts = [math.floor(resources.get(k, 0.0) / v + 1e-9) for k, v in bundle.items() if v > 0]
    return min(counts) if counts else 0


def plan_workers(cluster: ClusterSection, view: ClusterView) -> Placement:
    """Where the workers go, or `CapacityError` naming what is missing (one line)."""
    bundle = worker_bundle(cluster)
    low, high = cluster.worker_range
    request = (
        f"cluster.num_workers={high if low == high else [low, high]} x {_fmt(bundle)} per worker"
    )
    per_node = sorted((fits(bundle, n) for n in view.nodes), reverse=True)
    here = sum(per_node)
    types = [t for t in view.node_types if t.resources]
    unknown_types = view.autoscaler and not types
    addable = {t.name: fits(bundle, t.resources) for t in types}
    addable = {name: n for name, n in addable.items() if n > 0}
    if here == 0 and not addable and not unknown_types:
        raise CapacityError(f"{request}: {_missing(bundle, view)}")

    placed = _fill(per_node, high)
    added: dict[str, int] = {}
    remaining = high - sum(placed)
    for t in sorted(types, key=lambda t: -addable.get(t.name, 0)):
        per = addable.get(t.name, 0)
        if remaining <= 0 or per == 0:
            continue
        nodes = math.ceil(remaining / per)
        if t.max_count >= 0:
            nodes = min(nodes, t.max_count)
        if nodes:
            added[t.name] = nodes
            remaining -= min(remaining, nodes * per)
    reachable = high - remaining
    if unknown_types:
        note = (
            f"an autoscaler runs but its node types are not visible here: {remaining} "
            "worker(s) wait for nodes it may add"
            if remaining
            else ""
        )
        return Placement(high, [n for n in placed if n], added, note)
    if reachable < low:
        where = "the cluster and its autoscaler" if types else "the cluster"
        raise CapacityError(
            f"{request}: {where} can hold {reachable} such worker(s) "
            f"({_total(bundle, view)}); add nodes or lower cluster.num_workers"
        )
    note = f"elastic: starts with {reachable} of at most {high} workers" if reachable < high else ""
    return Placement(reachable, [n for n in placed if n], added, note)


def _fill(capacity: list[int], workers: int) -> list[int]:
    """Ray Train's default placement (PACK): fill the roomiest nodes first."""
    placed = []
    for cap in capacity:
        take = min(cap, workers - sum(placed))
        placed.append(take)
    return placed


def _missing(bundle: dict[str, float], view: ClusterView) -> str:
    """Why not a single worker fits: the first resource no node (type) has enough of."""
    shapes = list(view.nodes) + [t.resources for t in view.node_types if t.resources]
    scope = " or node type the autoscaler can add" if view.node_types else ""
    where = f"the cluster: {_describe_nodes(view.nodes)}"
    for key, need in bundle.items():
        best = max((s.get(key, 0.0) for s in shapes), default=0.0)
        if best == 0:
            return f"no node{scope} has {key}; {where}"
        if best < need:
            return f"no node{scope} has {key} {_num(need)} (the largest has {_num(best)}); {where}"
    return f"no node{scope} has all of {_fmt(bundle)} at once; {where}"


def _total(bundle: dict[str, float], view: ClusterView) -> str:
    totals = {k: sum(n.get(k, 0.0) for n in view.nodes) for k in bundle}
    return f"{len(view.nodes)} node(s), {_fmt(totals)} in all"


def _describe_nodes(nodes: list[dict[str, float]]) -> str:
    if not nodes:
        return "no live nodes"
    shown = [
        _fmt({k: v for k, v in n.items() if k not in _BOOKKEEPING and not k.startswith("node:")})
        for n in nodes
    ]
    return f"{len(nodes)} node(s): " + ", ".join(shown)


def _fmt(resources: dict[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {_num(v)}" for k, v in sorted(resources.items())) + "}"


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def describe_plan(config: StageConfig, placement: Placement) -> str:
    """The plan as the driver prints it: nodes, workers per node, global batch, steps/epoch."""
    world = placement.workers
    t = config.train
    accum = config.grad_accum_steps(world)
    nodes = len(placement.per_node) + sum(placement.added.values())
    spread = " + ".join(str(n) for n in placement.per_node) or "none yet"
    added = "".join(f"; autoscaler adds {n} x {name}" for name, n in placement.added.items())
    lines = [
        f"plan: {world} worker(s) on {nodes} node(s) (workers per live node: {spread}{added})",
        f"plan: global batch {t.global_batch_size} = micro {t.micro_batch_size} x accum "
        f"{accum} x world {world}; {_steps_per_epoch(config, world, accum)}",
    ]
    if placement.note:
        lines.append(f"plan: {placement.note}")
    return "\n".join(lines)


def _steps_per_epoch(config: StageConfig, world: int, accum: int) -> str:
    if not config.data.train_shards:
        return "steps per epoch: unknown (no data.train_shards yet)"
    try:
        samples = open_train_sources(config.data).epoch_samples(config.data.train_split)
    except (DataError, OSError) as err:
        return f"steps per epoch: unknown ({str(err).splitlines()[0]})"
    topology = Topology(
        world_size=world,
        num_workers=config.data.num_workers,
        micro_batch_size=config.train.micro_batch_size,
        shuffle_buffer=config.data.shuffle_buffer,
    )
    batches = train_batches_per_rank(samples, topology)
    return f"{batches // accum} steps per epoch ({samples} train samples)"


def read_cluster() -> ClusterView:
    """What the connected Ray cluster has now and what its autoscaler can add."""
    import ray

    nodes = [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]
    types = _types_from_gcs() or _types_from_bootstrap(BOOTSTRAP_CONFIG.expanduser())
    return ClusterView(nodes, types, bool(types) or _autoscaler_runs())


def _types_from_gcs() -> list[NodeType]:
    try:
        import ray._private.state

        config = ray._private.state.state.get_cluster_config()
    except Exception:  # a private API: absent or changed means "not known"
        return []
    if config is None:
        return []
    return [
        NodeType(g.name, {k: float(v) for k, v in g.resources.items()}, int(g.max_count))
        for g in config.node_group_configs
    ]


def _types_from_bootstrap(path: Path) -> list[NodeType]:
    import yaml

    try:
        config = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return []
    default_max = int(config.get("max_workers", 0))
    head = config.get("head_node_type")
    types = []
    for name, spec in (config.get("available_node_types") or {}).items():
        if name == head or not isinstance(spec, dict):
            continue
        resources = {k: float(v) for k, v in (spec.get("resources") or {}).items()}
        types.append(NodeType(name, resources, int(spec.get("max_workers", default_max))))
    return types


def _autoscaler_runs() -> bool:
    """A node-type-aware autoscaler reports itself (every Ray runs a monitor; one without
    node types reports `legacy`)."""
    try:
        from ray.experimental.internal_kv import _internal_kv_get

        raw = _internal_kv_get("__autoscaling_status")
        report = json.loads(raw or b"{}").get("autoscaler_report") or {}
    except Exception:
        return False
    return bool(report) and report.get("legacy") is False


def check_capacity(
    config: StageConfig,
    *,
    echo: Callable[[str], None] | None = None,
    view: ClusterView | None = None,
) -> Placement:
    """Raise `CapacityError` (one line) if the request cannot fit; else print the plan."""
    placement = plan_workers(config.cluster, view or read_cluster())
    (echo or _print)(describe_plan(config, placement))
    return placement


def _print(message: str) -> None:
    print(message, flush=True)
