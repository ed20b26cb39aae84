"""Who reads which sample, in which order: a pure function of the manifest and the topology.

Nothing here does I/O. The plan is computed up front, identically on every rank and in every
dataloader worker, so that (a) no two consumers read the same sample, (b) every rank yields the
same number of batches, known before the first batch, and (c) a checkpointed position can be
turned back into "exactly these samples were consumed" by re-running the plan.

Training epoch
--------------
1. The shard list is shuffled from (seed, epoch). The samples of the shards in that order form
   the epoch's global stream; a sample's *global position* is its index in that stream.
2. The stream is cut into C = world_size x workers_per_rank contiguous ranges of n samples each,
   n = N // C rounded down to a multiple of micro_batch_size. Consumer c = rank * workers + worker
   reads range c. The remainder, the last N - C * n samples of the stream, is dropped for this
   epoch (the next epoch's shard order puts other samples at the end).
3. Each consumer emits its range in the order of a simulated shuffle buffer seeded from
   (seed, epoch, segment, consumer), and batches it into n / B micro-batches.

Repeated augmentation (`data.repeated_aug` = r > 1, DeiT's recipe) keeps the epoch's length: a
consumer still emits n slots, but they are ceil(n / r) samples drawn at random (seeded like the
buffer) from its range, each emitted r times in a row, so the copies share a micro-batch where
they fit; every copy is augmented with its own seed. The epoch sees about 1/r of the data, and no
sample belongs to two repeat groups: the no-repeat rule holds per group.

Resuming with a different topology mid-epoch makes the epoch a list of *segments*: the samples
the old topology consumed (re-derived from its position) leave the pool, the remaining samples, in
global order, are cut over the new consumers with the same rule, and the next epoch starts whole.

Evaluation
----------
No shuffle, no drop: the manifest order is cut into C contiguous ranges whose sizes differ by at
most one, and every consumer is padded to the same batch count with masked slots.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipelines.data.manifest import ShardInfo
from pipelines.errors import DataError
from pipelines.seeds import derive_seed


@dataclass(frozen=True)
class Topology:
    """Everything besides the data and the seed that decides how an epoch is split and ordered."""

    world_size: int
    num_workers: int
    micro_batch_size: int
    shuffle_buffer: int
    repeats: int = 1  # data.repeated_aug: copies of each sample an epoch emits (training only)

    def __post_init__(self) -> None:
        if self.world_size < 1 or self.num_workers < 0 or self.micro_batch_size < 1:
            raise ValueError(f"invalid topology {self}")
        if self.shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer must be >= 0, got {self.shuffle_buffer}")
        if self.repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {self.repeats}")

    @property
    def workers_per_rank(self) -> int:
        """num_workers=0 runs the dataset in the main process: one consumer per rank."""
        return max(1, self.num_workers)

    @property
    def num_consumers(self) -> int:
        return self.world_size * self.workers_per_rank

    def describe(self) -> str:
        repeats = f", repeated_aug={self.repeats}" if self.repeats > 1 else ""
        return (
            f"world_size={self.world_size} x num_workers={self.num_workers} x "
            f"micro_batch_size={self.micro_batch_size} (shuffle_buffer={self.shuffle_buffer}"
            f"{repeats})"
        )

    def to_dict(self) -> dict[str, int]:
        """The fields as loader state stores them (JSON); `repeats` only when on, so a state
        without it (every state written before it existed) means 1."""
        fields = {
            "world_size": self.world_size,
            "num_workers": self.num_workers,
            "micro_batch_size": self.micro_batch_size,
            "shuffle_buffer": self.shuffle_buffer,
        }
        return fields | ({"repeats": self.repeats} if self.repeats > 1 else {})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Topology:
        """Inverse of `to_dict`; KeyError/TypeError/ValueError on a malformed dict."""
        return cls(
            int(d["world_size"]),
            int(d["num_workers"]),
            int(d["micro_batch_size"]),
            int(d["shuffle_buffer"]),
            int(d.get("repeats", 1)),
        )


@dataclass(frozen=True)
class Segment:
    """A part of an epoch run under one topology, of which `position` rank-batches were consumed."""

    topology: Topology
    position: int


def shard_order(num_shards: int, seed: int, epoch: int) -> list[int]:
    """Manifest indices of the shards in the order epoch `epoch` streams them."""
    order = list(range(num_shards))
    random.Random(derive_seed("shards", seed, epoch)).shuffle(order)
    return order


def shuffle_buffer_order(n: int, buffer_size: int, seed: int) -> np.ndarray:
    """Output order of a shuffle buffer fed 0..n-1: out[j] is the local index emitted j-th.

    Simulated on indices so that the order is known before reading, and so that out[j] is always
    < j + buffer_size: a reader holds at most `buffer_size` samples to produce it.
    """
    if buffer_size <= 1 or n <= 1:
        return np.arange(n, dtype=np.int64)
    rng = random.Random(seed)
    out = np.empty(n, dtype=np.int64)
    buf: list[int] = []
    k = 0
    for i in range(n):
        buf.append(i)
        if len(buf) >= buffer_size:
            j = rng.randrange(len(buf))
            buf[j], buf[-1] = buf[-1], buf[j]
            out[k] = buf.pop()
            k += 1
    while buf:
        j = rng.randrange(len(buf))
        buf[j], buf[-1] = buf[-1], buf[j]
        out[k] = buf.pop()
        k += 1
    return out


def worker_batches_before(position: int, worker: int, workers_per_rank: int) -> int:
    """Batches worker `worker` produced among the first `position` rank batches (round robin)."""
    return max(0, -(-(position - worker) // workers_per_rank))


class EpochStream:
    """Maps global positions of one epoch to (manifest shard index, sample index in the shard)."""

    def __init__(self, shards: Sequence[ShardInfo], order: Sequence[int]):
        self.shards = tuple(shards)
        self.order = tuple(order)
        counts = [self.shards[i].samples for i in self.order]
        self.starts = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
        self.num_samples = int(self.starts[-1])

    def locate(self, position: int) -> tuple[int, int]:
        k = bisect.bisect_right(self.starts, position) - 1
        return self.order[k], position - int(self.starts[k])

    def group(self, positions: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """Sorted positions -> [(manifest shard index, sorted in-shard offsets)], stream order."""
        if len(positions) == 0:
            return []
        ks = np.searchsorted(self.starts, positions, side="right") - 1
        cuts = np.flatnonzero(np.diff(ks)) + 1
        groups = []
        for part, kpart in zip(np.split(positions, cuts), np.split(ks, cuts), strict=True):
            k = int(kpart[0])
            groups.append((self.order[k], part - self.starts[k]))
        return groups


@dataclass(frozen=True)
class ConsumerPlan:
    """What one consumer (rank, worker) reads and in which order.

    `positions` are the sorted global positions it reads; slot j of its output is
    `positions[order[j]]` for j < num_real, and a masked padding slot after that (eval only).
    With `repeats` r > 1 slot j is copy j % r of its sample (the copies are consecutive).
    """

    consumer: int
    positions: np.ndarray
    order: np.ndarray
    num_batches: int
    micro_batch_size: int
    repeats: int = 1

    @property
    def num_real(self) -> int:
        """Slots holding a sample (each copy of a repeated sample is a slot)."""
        return len(self.order)

    @property
    def num_slots(self) -> int:
        return self.num_batches * self.micro_batch_size


@dataclass(frozen=True)
class EpochPlan:
    """One epoch (or the current segment of a resumed epoch) for every consumer of every rank."""

    train: bool
    seed: int
    epoch: int
    topology: Topology
    stream: EpochStream
    pool: np.ndarray  # global positions still to be split in this segment, sorted
    per_consumer: int  # train: n samples per consumer; eval: the largest consumer's count
    segment_index: int = 0
    dropped: int = 0

    @property
    def batches_per_worker(self) -> int:
        return -(-self.per_consumer // self.topology.micro_batch_size)

    @property
    def batches_per_rank(self) -> int:
        return self.batches_per_worker * self.topology.workers_per_rank

    def consumer(self, rank: int, worker: int) -> ConsumerPlan:
        topo = self.topology
        assert 0 <= rank < topo.world_size and 0 <= worker < topo.workers_per_rank
        c = rank * topo.workers_per_rank + worker
        if self.train:
            positions = self.pool[c * self.per_consumer : (c + 1) * self.per_consumer]
            order_seed = derive_seed("buffer", self.seed, self.epoch, self.segment_index, c)
            if topo.repeats > 1:
                positions = _repeat_group_heads(positions, topo.repeats, order_seed)
            order = shuffle_buffer_order(len(positions), topo.shuffle_buffer, order_seed)
            order = np.repeat(order, topo.repeats)[: self.per_consumer]
        else:
            q, r = divmod(len(self.pool), topo.num_consumers)
            lo = c * q + min(c, r)
            positions = self.pool[lo : lo + q + (c < r)]
            order = np.arange(len(positions), dtype=np.int64)
        return ConsumerPlan(
            c, positions, order, self.batches_per_worker, topo.micro_batch_size, topo.repeats
        )

    def consumed(self, position: int) -> np.ndarray:
        """Global positions consumed once every rank has taken `position` batches (sorted)."""
        topo = self.topology
        parts = []
        for rank in range(topo.world_size):
            for worker in range(topo.workers_per_rank):
                k = worker_batches_before(position, worker, topo.workers_per_rank)
                if k:
                    plan = self.consumer(rank, worker)
                    parts.append(plan.positions[plan.order[: k * topo.micro_batch_size]])
        if not parts:
            return np.empty(0, dtype=np.int64)
        return np.unique(np.concatenate(parts))  # sorted; a repeat group counts once


def _repeat_group_heads(span: np.ndarray, repeats: int, seed: int) -> np.ndarray:
    """The ceil(len(span) / repeats) positions of `span` that are repeated, drawn at random and
    returned sorted, so that the consumer still reads its shards front to back."""
    count = -(-len(span) // repeats)
    chosen = np.random.default_rng(seed).choice(len(span), size=count, replace=False)
    return span[np.sort(chosen)]


def _split_train(pool_size: int, topo: Topology) -> int:
    per = pool_size // topo.num_consumers
    return per - per % topo.micro_batch_size


def train_batches_per_rank(num_samples: int, topology: Topology) -> int:
    """Micro-batches each rank reads in a whole training epoch of `num_samples` (no history):
    the driver prints steps per epoch from it before any loader exists."""
    return (
        _split_train(num_samples, topology)
        // topology.micro_batch_size
        * (topology.workers_per_rank)
    )


def plan_train_epoch(
    shards: Sequence[ShardInfo],
    *,
    seed: int,
    epoch: int,
    topology: Topology,
    history: Sequence[Segment] = (),
    split: str = "train",
) -> EpochPlan:
    """The plan of the current segment of a training epoch (the whole epoch if no history).

    `history` lists the earlier segments of this epoch (other topologies, from checkpoints):
    their consumed samples are removed from the pool before it is split over `topology`.
    Raises `DataError` if a whole epoch cannot give every consumer one micro-batch.
    """
    stream = EpochStream(shards, shard_order(len(shards), seed, epoch))
    pool = np.arange(stream.num_samples, dtype=np.int64)
    for index, seg in enumerate(history):
        per = _split_train(len(pool), seg.topology)
        old = EpochPlan(True, seed, epoch, seg.topology, stream, pool, per, index)
        pool = np.setdiff1d(pool, old.consumed(seg.position), assume_unique=True)
    per = _split_train(len(pool), topology)
    if per == 0 and not history:
        need = topology.num_consumers * topology.micro_batch_size
        raise DataError(
            f"split {split!r} has {stream.num_samples} samples, but world_size="
            f"{topology.world_size} x workers per rank={topology.workers_per_rank} x "
            f"micro_batch_size={topology.micro_batch_size} needs at least {need} per epoch "
            "(one micro-batch per consumer); lower data.num_workers or "
            "train.micro_batch_size, use fewer training workers, or add data"
        )
    dropped = len(pool) - per * topology.num_consumers
    return EpochPlan(True, seed, epoch, topology, stream, pool, per, len(history), dropped)


def plan_eval(shards: Sequence[ShardInfo], *, topology: Topology) -> EpochPlan:
    """Every sample once, manifest order, ranges differing by at most one, padded batches."""
    stream = EpochStream(shards, range(len(shards)))
    pool = np.arange(stream.num_samples, dtype=np.int64)
    largest = -(-len(pool) // topology.num_consumers)
    return EpochPlan(False, 0, 0, topology, stream, pool, largest)
