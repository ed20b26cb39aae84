"""What one training epoch streams, in which order: a list of *pieces*, each some samples of one
shard, laid end to end. A sample's global position is its index in that stream.

One shard set: a piece per shard, in the epoch's shard order (`shard_order`), holding every
sample of the shard that is not excluded. A mix of shard sets (`SourceShare`, one per source)
takes each source's share of the epoch: `choose = full x available + rest` becomes `full` whole
copies of each shard and, for the rest, a draw without replacement at sample granularity whose
per-shard counts come from a seeded multivariate hypergeometric; the pieces of every source are
then shuffled together like shards. Which samples a drawn piece holds is only computed when a
consumer reads it, so the stream costs O(pieces) anywhere, never O(samples).

Excluded samples (`exclude`: per shard, sorted in-shard offsets) are absent as if the shard did
not hold them: piece-local index j is the j-th kept sample of its shard.

Pure: no I/O; the same stream in every process for a given (shards, seed, epoch).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from pipelines.data.manifest import ShardInfo
from pipelines.seeds import derive_seed

# numpy's hypergeometric takes at most this many good (and bad) items; above it, a split of the
# draw uses the normal approximation with the exact hypergeometric variance.
_EXACT_LIMIT = 10**9 - 1


def shard_order(num_shards: int, seed: int, epoch: int) -> list[int]:
    """Indices 0..num_shards-1 in the order epoch `epoch` streams them (shards, or a mix's
    pieces)."""
    order = list(range(num_shards))
    random.Random(derive_seed("shards", seed, epoch)).shuffle(order)
    return order


@dataclass(frozen=True)
class SourceShare:
    """One source of a mix: shards `first_shard .. first_shard + num_shards - 1` of the combined
    shard list, of which an epoch streams `choose` samples."""

    first_shard: int
    num_shards: int
    choose: int


@dataclass(frozen=True, eq=False)
class EpochStream:
    """Maps global positions of one epoch to (shard index, sample offset in the shard)."""

    order: np.ndarray  # int64 (pieces,): the shard each piece reads
    starts: np.ndarray  # int64 (pieces + 1,): global position of each piece's first sample
    draws: Mapping[int, tuple[int, int]] = field(default_factory=dict)  # piece -> (seed, kept)
    excluded: Mapping[int, np.ndarray] = field(default_factory=dict)  # shard -> sorted offsets

    @property
    def num_samples(self) -> int:
        return int(self.starts[-1])

    def piece_of(self, position: int) -> int:
        return int(np.searchsorted(self.starts, position, side="right")) - 1

    def locate(self, position: int) -> tuple[int, int]:
        k = self.piece_of(position)
        return int(self.order[k]), int(self._offsets(k, np.array([position - self.starts[k]]))[0])

    def group(self, positions: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """Sorted positions -> [(shard index, sorted in-shard offsets)], one per piece, in stream
        order (a shard read by two pieces, two copies of a repeated source, comes twice)."""
        if len(positions) == 0:
            return []
        ks = np.searchsorted(self.starts, positions, side="right") - 1
        cuts = np.flatnonzero(np.diff(ks)) + 1
        groups = []
        for part, kpart in zip(np.split(positions, cuts), np.split(ks, cuts), strict=True):
            k = int(kpart[0])
            groups.append((int(self.order[k]), self._offsets(k, part - self.starts[k])))
        return groups

    def _offsets(self, piece: int, local: np.ndarray) -> np.ndarray:
        """Piece-local indices -> in-shard offsets: through the piece's draw (a sorted subset of
        the shard's kept samples), then past the shard's excluded samples."""
        if piece in self.draws:
            seed, kept = self.draws[piece]
            count = int(self.starts[piece + 1] - self.starts[piece])
            chosen = np.random.default_rng(seed).choice(kept, size=count, replace=False)
            local = np.sort(chosen)[local]
        excluded = self.excluded.get(int(self.order[piece]))
        if excluded is None or not len(excluded):
            return local
        shifted = excluded - np.arange(len(excluded))
        return local + np.searchsorted(shifted, local, side="right")


def kept_counts(shards: Sequence[ShardInfo], excluded: Mapping[int, np.ndarray]) -> np.ndarray:
    """Samples of each shard that an epoch may stream (its samples less the excluded ones)."""
    counts = np.fromiter((s.samples for s in shards), dtype=np.int64, count=len(shards))
    for shard, offsets in excluded.items():
        counts[shard] -= len(offsets)
    return counts


def single_stream(
    shards: Sequence[ShardInfo], seed: int, epoch: int, excluded: Mapping[int, np.ndarray]
) -> EpochStream:
    """One shard set: every kept sample once, shards in the epoch's shard order."""
    order = np.asarray(shard_order(len(shards), seed, epoch), dtype=np.int64)
    counts = kept_counts(shards, excluded)[order]
    return EpochStream(order, _starts(counts), {}, excluded)


def mixed_stream(
    shards: Sequence[ShardInfo],
    sources: Sequence[SourceShare],
    seed: int,
    epoch: int,
    excluded: Mapping[int, np.ndarray],
) -> EpochStream:
    """A mix: each source's `choose` samples as whole copies plus a drawn rest, every source's
    pieces shuffled together from (seed, epoch)."""
    kept = kept_counts(shards, excluded)
    piece_shards, piece_counts, piece_drawn = [], [], []
    for index, source in enumerate(sources):
        ids = np.arange(source.first_shard, source.first_shard + source.num_shards, dtype=np.int64)
        available = kept[ids]
        if not available.sum():  # nothing left to stream (the mix's resolution refuses this)
            continue
        full, rest = divmod(source.choose, int(available.sum()))
        rng = np.random.default_rng(derive_seed("mix", seed, epoch, index))
        takes = multivariate_hypergeometric(available, rest, rng)
        took = takes > 0
        piece_shards += [np.repeat(ids, full), ids[took]]
        piece_counts += [np.repeat(available, full), takes[took]]
        piece_drawn += [np.zeros(len(ids) * full, bool), takes[took] < available[took]]
    perm = np.asarray(shard_order(sum(map(len, piece_shards)), seed, epoch), dtype=np.int64)
    order = np.concatenate(piece_shards)[perm]
    drawn = np.concatenate(piece_drawn)[perm]
    draws = {
        int(piece): (
            derive_seed("mix-draw", seed, epoch, int(order[piece])),
            int(kept[order[piece]]),
        )
        for piece in np.flatnonzero(drawn)
    }
    return EpochStream(order, _starts(np.concatenate(piece_counts)[perm]), draws, excluded)


def multivariate_hypergeometric(
    counts: np.ndarray, draw: int, rng: np.random.Generator
) -> np.ndarray:
    """How many of `draw` items taken uniformly without replacement from bins of `counts` items
    fall in each bin. Split in halves, level by level (O(bins) work, vectorised); numpy's own
    `multivariate_hypergeometric` refuses 10^9 items or more in all."""
    counts = np.asarray(counts, dtype=np.int64)
    takes = np.zeros(len(counts), dtype=np.int64)
    if draw <= 0 or not len(counts):
        return takes
    prefix = np.concatenate([[0], np.cumsum(counts)])
    lo, hi, n = np.array([0]), np.array([len(counts)]), np.array([draw], dtype=np.int64)
    while len(lo):
        leaf = hi - lo == 1
        takes[lo[leaf]] = n[leaf]
        lo, hi, n = lo[~leaf], hi[~leaf], n[~leaf]
        mid = (lo + hi) // 2
        left = _hypergeometric(rng, prefix[mid] - prefix[lo], prefix[hi] - prefix[mid], n)
        lo, hi, n = (
            np.concatenate([lo, mid]),
            np.concatenate([mid, hi]),
            np.concatenate([left, n - left]),
        )
        busy = n > 0
        lo, hi, n = lo[busy], hi[busy], n[busy]
    return takes


def _hypergeometric(
    rng: np.random.Generator, good: np.ndarray, bad: np.ndarray, draw: np.ndarray
) -> np.ndarray:
    """Vectorised hypergeometric draws; exact where numpy allows, else normal-approximated."""
    out = np.zeros(len(draw), dtype=np.int64)
    trivial = (good == 0) | (bad == 0) | (draw == 0)
    out[trivial & (bad == 0)] = draw[trivial & (bad == 0)]
    exact = ~trivial & (good <= _EXACT_LIMIT) & (bad <= _EXACT_LIMIT)
    if exact.any():
        out[exact] = rng.hypergeometric(good[exact], bad[exact], draw[exact])
    approx = ~trivial & ~exact
    if approx.any():
        g, b, n = (x[approx].astype(np.float64) for x in (good, bad, draw))
        total = g + b
        mean = n * g / total
        var = n * (g / total) * (b / total) * (total - n) / (total - 1)
        value = np.rint(mean + np.sqrt(var) * rng.standard_normal(len(n)))
        out[approx] = np.clip(value, np.maximum(0, n - b), np.minimum(n, g)).astype(np.int64)
    return out


def _starts(counts: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(np.int64)
