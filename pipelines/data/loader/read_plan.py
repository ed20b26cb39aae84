"""Who reads which sample, in which order: a pure function of the manifest and the topology.

Nothing here does I/O. The plan is computed up front, identically on every rank and in every
dataloader worker, so that (a) no two consumers read the same sample, (b) every rank yields the
same number of batches, known before the first batch, and (c) a checkpointed position can be
turned back into "exactly these samples were consumed" by re-running the plan.

Training epoch
--------------
1. The epoch's stream (`epoch_stream`): the shard list shuffled from (seed, epoch), or a mix of
   shard sets drawn in proportion; excluded samples are absent. A sample's *global position* is
   its index in that stream.
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

Scale: ranges, not arrays
-------------------------
The pool is never materialised. Each old consumer consumed an exact count (a function of its
worker index and the position) from a known contiguous range of the old pool, so the pool after
a segment is, in order, each old consumer's range less its consumed samples, then the old tail:
a `SegmentCut` holds that as a few counts. A consumer's range in the newest pool maps down
through the cuts to global positions, replaying only the few old consumers it overlaps. Planning
costs O(pieces of the stream + workers per rank x segments) and a consumer's plan O(its own
samples + the old consumers it overlaps), whatever N is; the `EpochPlan` a dataloader worker
receives is that compact description, from which it computes its own consumer.

Evaluation
----------
No shuffle, no drop: the manifest order is cut into C contiguous ranges whose sizes differ by at
most one, and every consumer is padded to the same batch count with masked slots.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipelines.data.loader.epoch_stream import (
    EpochStream,
    SourceShare,
    mixed_stream,
    shard_order,
    single_stream,
)
from pipelines.data.manifest import ShardInfo
from pipelines.errors import DataError
from pipelines.seeds import derive_seed

__all__ = [
    "ConsumerPlan",
    "EpochPlan",
    "EpochStream",
    "Segment",
    "SegmentCut",
    "SourceShare",
    "Topology",
    "excluded_offsets",
    "plan_eval",
    "plan_train_epoch",
    "shard_order",
    "shuffle_buffer_order",
    "train_batches_per_rank",
    "worker_batches_before",
]


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


def _order_seed(seed: int, epoch: int, segment: int, consumer: int) -> int:
    return derive_seed("buffer", seed, epoch, segment, consumer)


def _group_heads(span: int, repeats: int, seed: int) -> np.ndarray:
    """Which of a consumer's `span` samples it reads: all of them, or with repeated augmentation
    the ceil(span / repeats) repeated ones, drawn at random and sorted, so that the consumer
    still reads its shards front to back."""
    if repeats == 1:
        return np.arange(span, dtype=np.int64)
    count = -(-span // repeats)
    return np.sort(np.random.default_rng(seed).choice(span, size=count, replace=False))


@dataclass(frozen=True)
class SegmentCut:
    """How segment `index` of an epoch turned its pool into the next segment's, as counts.

    Under `topology`, consumer c read pool indices [c * per, (c + 1) * per) and, by the time every
    rank had taken `position` batches, had consumed `consumed[c % workers]` of them (the count
    depends only on the worker index). The next pool is, in order, each consumer's range less what
    it consumed, then this pool's tail from C * per on.
    """

    seed: int
    epoch: int
    index: int
    topology: Topology
    position: int
    pool_size: int
    per: int
    consumed: tuple[int, ...]

    @classmethod
    def of(
        cls, segment: Segment, *, seed: int, epoch: int, index: int, pool_size: int
    ) -> SegmentCut:
        topo = segment.topology
        per = _split_train(pool_size, topo)
        consumed = []
        for worker in range(topo.workers_per_rank):
            batches = worker_batches_before(segment.position, worker, topo.workers_per_rank)
            slots = min(batches * topo.micro_batch_size, per)
            consumed.append(-(-slots // topo.repeats))  # a repeat group counts once
        return cls(seed, epoch, index, topo, segment.position, pool_size, per, tuple(consumed))

    @property
    def next_pool_size(self) -> int:
        return self.pool_size - self.topology.world_size * sum(self.consumed)

    def to_previous(self, indices: np.ndarray) -> np.ndarray:
        """Sorted indices into the next pool -> the same samples' indices into this pool."""
        topo, per = self.topology, self.per
        workers = topo.workers_per_rank
        remaining = per - np.asarray(self.consumed, dtype=np.int64)
        prefix = np.concatenate([[0], np.cumsum(remaining)])
        per_rank = int(prefix[-1])
        kept_ranges = topo.world_size * per_rank
        out = np.empty_like(indices)
        tail = indices >= kept_ranges
        out[tail] = topo.num_consumers * per + (indices[tail] - kept_ranges)
        head = indices[~tail]
        if len(head):
            rank, within = np.divmod(head, per_rank)
            worker = np.searchsorted(prefix, within, side="right") - 1
            consumer = rank * workers + worker
            local = within - prefix[worker]
            starts = np.concatenate([[0], np.flatnonzero(np.diff(consumer)) + 1, [len(head)]])
            mapped = np.empty_like(head)
            for lo, hi in zip(starts[:-1], starts[1:], strict=True):
                c = int(consumer[lo])
                mapped[lo:hi] = c * per + self._kept(c, local[lo:hi])
            out[~tail] = mapped
        return out

    def _kept(self, consumer: int, local: np.ndarray) -> np.ndarray:
        """The local-th samples (sorted) of `consumer`'s range that it did not consume."""
        topo = self.topology
        count = self.consumed[consumer % topo.workers_per_rank]
        if count == 0:
            return local
        if topo.repeats == 1 and topo.shuffle_buffer <= 1:  # it consumed its first `count`
            return local + count
        seed = _order_seed(self.seed, self.epoch, self.index, consumer)
        heads = _group_heads(self.per, topo.repeats, seed)
        order = shuffle_buffer_order(len(heads), topo.shuffle_buffer, seed)
        gone = np.zeros(self.per, dtype=bool)
        gone[heads[order[:count]]] = True
        return np.flatnonzero(~gone)[local]


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


@dataclass(frozen=True, eq=False)
class EpochPlan:
    """One epoch (or the current segment of a resumed epoch) for every consumer of every rank,
    as a compact description: O(pieces + segments x workers), never O(samples)."""

    train: bool
    seed: int
    epoch: int
    topology: Topology
    stream: EpochStream
    pool_size: int  # samples still to be split in this segment
    per_consumer: int  # train: n samples per consumer; eval: the largest consumer's count
    segment_index: int = 0
    dropped: int = 0
    cuts: tuple[SegmentCut, ...] = ()  # the earlier segments of this epoch, oldest first

    @property
    def batches_per_worker(self) -> int:
        return -(-self.per_consumer // self.topology.micro_batch_size)

    @property
    def batches_per_rank(self) -> int:
        return self.batches_per_worker * self.topology.workers_per_rank

    @property
    def consumed_before(self) -> int:
        """Samples of the epoch's stream the earlier segments consumed."""
        return self.stream.num_samples - self.pool_size

    def consumer(self, rank: int, worker: int) -> ConsumerPlan:
        topo = self.topology
        assert 0 <= rank < topo.world_size and 0 <= worker < topo.workers_per_rank
        c = rank * topo.workers_per_rank + worker
        if self.train:
            seed = _order_seed(self.seed, self.epoch, self.segment_index, c)
            local = _group_heads(self.per_consumer, topo.repeats, seed)
            positions = self.positions(c * self.per_consumer + local)
            order = shuffle_buffer_order(len(positions), topo.shuffle_buffer, seed)
            order = np.repeat(order, topo.repeats)[: self.per_consumer]
        else:
            q, r = divmod(self.pool_size, topo.num_consumers)
            lo = c * q + min(c, r)
            positions = np.arange(lo, lo + q + (c < r), dtype=np.int64)
            order = np.arange(len(positions), dtype=np.int64)
        return ConsumerPlan(
            c, positions, order, self.batches_per_worker, topo.micro_batch_size, topo.repeats
        )

    def positions(self, indices: np.ndarray) -> np.ndarray:
        """Sorted indices into this segment's pool -> global positions of the stream."""
        for cut in reversed(self.cuts):
            indices = cut.to_previous(indices)
        return indices

    @property
    def pool(self) -> np.ndarray:
        """Every global position still to be split in this segment, sorted. O(N): for tests and
        debugging only; planning never builds it."""
        return self.positions(np.arange(self.pool_size, dtype=np.int64))

    def consumed(self, position: int) -> np.ndarray:
        """Global positions consumed once every rank has taken `position` batches (sorted).
        O(N): for tests; a resume derives the same from `SegmentCut` counts."""
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


def excluded_offsets(
    shards: Sequence[ShardInfo], exclude: Mapping[int, Sequence[int]] | None
) -> dict[int, np.ndarray]:
    """`exclude` (shard index -> in-shard offsets of samples to leave out) checked and as sorted
    unique arrays; a `DataError` names a shard index or offset that is not in `shards`."""
    found: dict[int, np.ndarray] = {}
    for shard, offsets in (exclude or {}).items():
        if not 0 <= shard < len(shards):
            raise DataError(f"excluded samples name shard #{shard}; the set has {len(shards)}")
        unique = np.unique(np.asarray(offsets, dtype=np.int64))
        samples = shards[shard].samples
        if len(unique) and (unique[0] < 0 or unique[-1] >= samples):
            raise DataError(
                f"excluded samples of shard {shards[shard].name} must be offsets 0..{samples - 1}"
            )
        if len(unique):
            found[int(shard)] = unique
    return found


def plan_train_epoch(
    shards: Sequence[ShardInfo],
    *,
    seed: int,
    epoch: int,
    topology: Topology,
    history: Sequence[Segment] = (),
    split: str = "train",
    exclude: Mapping[int, Sequence[int]] | None = None,
    mix: Sequence[SourceShare] | None = None,
) -> EpochPlan:
    """The plan of the current segment of a training epoch (the whole epoch if no history).

    `history` lists the earlier segments of this epoch (other topologies, from checkpoints):
    their consumed samples are removed from the pool before it is split over `topology`.
    `exclude` (shard index -> in-shard offsets) removes samples from every epoch as if absent;
    `mix` reads `shards` as the concatenated shard lists of sources, each with its share.
    Raises `DataError` if a whole epoch cannot give every consumer one micro-batch.
    """
    excluded = excluded_offsets(shards, exclude)
    if mix:
        stream = mixed_stream(shards, mix, seed, epoch, excluded)
    else:
        stream = single_stream(shards, seed, epoch, excluded)
    size, cuts = stream.num_samples, []
    for index, segment in enumerate(history):
        cut = SegmentCut.of(segment, seed=seed, epoch=epoch, index=index, pool_size=size)
        cuts.append(cut)
        size = cut.next_pool_size
    per = _split_train(size, topology)
    if per == 0 and not history:
        need = topology.num_consumers * topology.micro_batch_size
        raise DataError(
            f"split {split!r} has {stream.num_samples} samples per epoch, but world_size="
            f"{topology.world_size} x workers per rank={topology.workers_per_rank} x "
            f"micro_batch_size={topology.micro_batch_size} needs at least {need} per epoch "
            "(one micro-batch per consumer); lower data.num_workers or "
            "train.micro_batch_size, use fewer training workers, or add data"
        )
    dropped = size - per * topology.num_consumers
    return EpochPlan(
        True, seed, epoch, topology, stream, size, per, len(history), dropped, tuple(cuts)
    )


def plan_eval(shards: Sequence[ShardInfo], *, topology: Topology) -> EpochPlan:
    """Every sample once, manifest order, ranges differing by at most one, padded batches."""
    stream = _manifest_order(shards)
    largest = -(-stream.num_samples // topology.num_consumers)
    return EpochPlan(False, 0, 0, topology, stream, stream.num_samples, largest)


def _manifest_order(shards: Sequence[ShardInfo]) -> EpochStream:
    counts = np.fromiter((s.samples for s in shards), dtype=np.int64, count=len(shards))
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return EpochStream(np.arange(len(shards), dtype=np.int64), starts)
