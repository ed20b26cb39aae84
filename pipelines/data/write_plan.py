"""The plan: which split and which shard every sample goes to. Built on the driver, from the
source index, the seed and the shard size only (never the number of workers), so the same
inputs always give the same shards.

Orderings come from hashing (seed, purpose, key) rather than from a random generator, so they do
not depend on the numpy or Python version either:
- split: per class, samples ordered by hash; the first round(n * val_fraction) go to `val`, at
  least one when the class has >= 2 samples, never all of them (stratified);
- shards: each split ordered by hash (so shards mix classes), then cut into runs of
  `samples_per_shard`.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from pipelines.data.sources.base import Rejected, SampleRef, SourceIndex
from pipelines.data.subset import select_per_class

PLAN_VERSION = 1
TRAIN, VAL = "train", "val"


@dataclass(frozen=True)
class ShardTask:
    """One shard to write: its split, number and samples, and a fingerprint of everything that
    decides its bytes (source identity, encode options, classes, samples), for re-runs."""

    split: str
    number: int
    refs: tuple[SampleRef, ...]
    fingerprint: str

    @property
    def name(self) -> str:
        return shard_name(self.split, self.number)


@dataclass(frozen=True)
class ShardPlan:
    classes: tuple[str, ...]
    shards: tuple[ShardTask, ...]
    rejected: tuple[Rejected, ...]  # known at index time (labels)
    fingerprint: str

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(t.split for t in self.shards))

    def num_samples(self, split: str | None = None) -> int:
        return sum(len(t.refs) for t in self.shards if split in (None, t.split))


def shard_name(split: str, number: int) -> str:
    return f"{split}-{number:06d}.tar"


def _order(seed: int, purpose: str, key: str) -> bytes:
    return hashlib.sha256(f"{seed}\0{purpose}\0{key}".encode()).digest()


def split_refs(
    refs: tuple[SampleRef, ...], val_fraction: float, seed: int
) -> dict[str, list[SampleRef]]:
    """Stratified train/val split; `val` only when `val_fraction > 0`."""
    if val_fraction <= 0:
        return {TRAIN: list(refs)}
    by_class: dict[int, list[SampleRef]] = defaultdict(list)
    for ref in refs:
        by_class[ref.label].append(ref)
    train: list[SampleRef] = []
    val: list[SampleRef] = []
    for label in sorted(by_class):
        members = sorted(by_class[label], key=lambda r: _order(seed, "split", r.key))
        n = len(members)
        n_val = 0 if n < 2 else min(max(1, int(n * val_fraction + 0.5)), n - 1)
        val.extend(members[:n_val])
        train.extend(members[n_val:])
    return {TRAIN: train, VAL: val}


def make_plan(
    index: SourceIndex,
    *,
    samples_per_shard: int,
    val_fraction: float,
    seed: int,
    settings: dict[str, Any],
    train_per_class: int | None = None,
    train_subset_seed: int = 0,
) -> ShardPlan:
    """`settings`: everything besides the samples that decides a shard's bytes (JSON-able).
    `train_per_class`: keep that many training samples per class (`pipelines.data.subset`)."""
    assert samples_per_shard >= 1
    common = json.dumps(
        {"plan_version": PLAN_VERSION, "classes": index.classes, **settings}, sort_keys=True
    )
    shards: list[ShardTask] = []
    splits = split_refs(index.refs, val_fraction, seed)
    if train_per_class is not None:
        splits[TRAIN] = select_per_class(splits[TRAIN], train_per_class, train_subset_seed)
    for split, members in splits.items():
        ordered = sorted(members, key=lambda r: _order(seed, split, r.key))
        for number, start in enumerate(range(0, len(ordered), samples_per_shard)):
            refs = tuple(ordered[start : start + samples_per_shard])
            digest = hashlib.sha256(common.encode())
            digest.update(shard_name(split, number).encode())
            for ref in refs:
                digest.update(json.dumps([ref.key, ref.label, ref.source_id, ref.stamp]).encode())
            shards.append(ShardTask(split, number, refs, digest.hexdigest()))
    whole = hashlib.sha256()
    for task in shards:
        whole.update(task.fingerprint.encode())
    for rejected in index.rejected:
        whole.update(json.dumps([rejected.source_id, rejected.reason]).encode())
    return ShardPlan(index.classes, tuple(shards), index.rejected, whole.hexdigest())
