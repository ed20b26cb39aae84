"""The per-consumer IterableDataset: stream a consumer's samples in plan order and batch them.

One instance serves every dataloader worker of a rank; each worker finds its consumer from its
worker id, so the DataLoader's round robin over workers reproduces the rank's batch order. Samples
are read front to back from the consumer's shards and held (undecoded) only until their slot in
the shuffle order comes up; samples before the start slot are never decoded.

Bad samples never stop the epoch. In training, a bad slot is refilled from the consumer's
*reserve*, its first `micro_batch_size` good samples in slot order, taking reserve entry
`slot % len(reserve)` and augmenting it with the bad slot's own seed: a pure function of the plan
and the data, so a resumed run refills exactly as the uninterrupted one. (The reserve is read by a
second pass over the consumer's first samples, only once a bad slot is met.) In evaluation a bad
slot is masked (`valid=False`) like padding. Counters travel with every batch, cumulative per
worker, because workers share no memory with the training process.
"""

from __future__ import annotations

import bisect
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from pipelines.config.data import AugmentSection
from pipelines.data.loader.crop_boxes import CropBox, eval_box, train_box
from pipelines.data.loader.read_plan import (
    ConsumerPlan,
    EpochPlan,
    worker_batches_before,
)
from pipelines.data.loader.shard_files import verify_shard
from pipelines.data.loader.tar_reader import Missing, RawSample, read_shard
from pipelines.data.loader.transforms import (
    BadSample,
    apply_seeded,
    decode_sample,
    eval_transform,
    parse_sample,
    train_transform,
)
from pipelines.errors import DataError
from pipelines.seeds import derive_seed
from pipelines.storage import Location

logger = logging.getLogger(__name__)


def _batch_buffer(shape: tuple[int, ...]) -> torch.Tensor:
    """A uint8 batch; in a worker, in shared memory, so sending it to the trainer is free."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=torch.uint8)
    storage = torch.UntypedStorage._new_shared(math.prod(shape))  # as default_collate does
    return torch.empty(0, dtype=torch.uint8).set_(storage, 0, shape)


def _byte_tensor(data: bytes) -> torch.Tensor:
    if not data:  # frombuffer refuses an empty buffer
        return torch.empty(0, dtype=torch.uint8)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


@dataclass(frozen=True)
class SourceSpec:
    """One shard set of the training set (several in a mix): where its shards must stay, and
    how its samples are labelled."""

    root: Location  # every shard's resolved path must stay inside it
    num_classes: int  # its manifest's: a label outside 0..num_classes-1 is a bad sample
    label_key: str = "cls"  # where a sample's label is (pipelines.data.labels)
    classes: tuple[str, ...] = ()  # class names, for labels given as names
    label_offset: int = 0  # added to its labels (data.mix_classes: offset)


@dataclass(frozen=True)
class DatasetSpec:
    """Everything a worker needs; plain data so that it pickles under any start method. The plan
    is the compact description of every consumer's (O(shards)), each worker computes its own."""

    shards: tuple[Location, ...]  # indexed like the plan's (combined) shard list
    sources: tuple[SourceSpec, ...]  # one per source, in the order of the shard list
    first_shards: tuple[int, ...]  # index of each source's first shard in `shards`
    max_member_bytes: int  # a tar member claiming more ends its shard
    plan: EpochPlan
    rank: int
    start_position: int  # rank batches of this segment already consumed
    max_pixels: int
    max_skip_fraction: float
    img_size: int
    augment: AugmentSection
    # False: leave the pixels to the training process (data.decode_device); choose boxes only.
    decode_in_worker: bool = True
    # (bytes, sha256) per shard: each is hashed before its samples are used; None: trusted.
    expected: tuple[tuple[int, str], ...] | None = None
    skips: tuple[tuple[int, ...], ...] = ()  # per shard: tar runs that are not samples

    def source_of(self, shard: int) -> int:
        return bisect.bisect_right(self.first_shards, shard) - 1

    def root_of(self, shard: int) -> Location:
        return self.sources[self.source_of(shard)].root


@dataclass
class _Good:
    image: torch.Tensor | bytes  # uint8 (3, h, w), not yet augmented; or still encoded
    label: int
    key: str
    size: tuple[int, int] = (0, 0)  # (width, height) of an encoded image
    source: int = 0  # which source of a mix it came from


@dataclass
class _Slot:
    image: torch.Tensor | bytes  # uint8 (3, img_size, img_size), augmented; or still encoded
    label: int
    key: str
    valid: bool
    box: CropBox | None = None  # where the device crops an encoded image
    source: int = -1  # which source of a mix (-1: padding)


class ShardDataset(IterableDataset):
    """Yields the batches of this worker's consumer from its start batch; see the module doc."""

    def __init__(self, spec: DatasetSpec):
        super().__init__()
        self.spec = spec

    def __iter__(self) -> Iterator[dict[str, Any]]:
        spec = self.spec
        topo = spec.plan.topology
        info = get_worker_info()
        worker_id, num_workers = (info.id, info.num_workers) if info else (0, 1)
        assert num_workers == topo.workers_per_rank, (num_workers, topo)
        # The DataLoader starts its round robin at worker 0; rank batch `start_position` must
        # come from worker start_position % W, so dataloader worker i plays worker i + start.
        worker = (worker_id + spec.start_position) % topo.workers_per_rank
        start_batch = worker_batches_before(spec.start_position, worker, topo.workers_per_rank)
        consumer = ConsumerStream(spec, spec.plan.consumer(spec.rank, worker))
        yield from consumer.batches(start_batch)


class ConsumerStream:
    """Reads, decodes, augments and batches one consumer's samples."""

    def __init__(self, spec: DatasetSpec, plan: ConsumerPlan):
        self.spec = spec
        self.plan = plan
        self.train = spec.plan.train
        self.transform = (
            train_transform(spec.augment, spec.img_size)
            if self.train
            else eval_transform(spec.augment, spec.img_size)
        )
        self.counts = {"samples": 0, "skipped": 0, "refilled": 0, "padded": 0}
        self._reserve: list[_Good] | None = None
        self._verified: set[int] = set()
        self._label_args = [
            {
                "num_classes": source.num_classes,
                "max_pixels": spec.max_pixels,
                "label_key": source.label_key,
                "classes": {name: i for i, name in enumerate(source.classes)},
            }
            for source in spec.sources
        ]

    def batches(self, start_batch: int) -> Iterator[dict[str, Any]]:
        """Batches start_batch.. of this consumer; a DataError becomes a final {'error': ...}."""
        plan, size = self.plan, self.plan.micro_batch_size
        slots = self._slots(start_batch * size)
        for b in range(start_batch, plan.num_batches):
            filled = []
            try:
                for j in range(b * size, (b + 1) * size):
                    filled.append(self._fill(j, slots) if j < plan.num_real else self._padding())
            except DataError as err:  # sent, not raised: the trainer re-raises it cleanly
                yield {"error": str(err)}
                return
            yield self._collate(filled)

    def _fill(self, slot: int, slots: Iterator[tuple[int, RawSample | Missing]]) -> _Slot:
        position, item = next(slots)
        copy = slot % self.plan.repeats  # which copy of a repeated sample: its own augmentation
        try:
            good = self._decode(item, self._source_at(position))
            self.counts["samples"] += 1
        except BadSample as err:
            self._skip(position, item, str(err))
            if not self.train:
                return self._invalid()
            reserve = self.reserve()
            if not reserve:
                raise DataError(self._no_reserve_message()) from None
            good = reserve[slot % len(reserve)]
            self.counts["refilled"] += 1
        if not self.spec.decode_in_worker:
            box = self._box(good.size, position, copy)
            return _Slot(good.image, good.label, good.key, True, box, good.source)
        image = self._augment(good.image, position, copy)
        return _Slot(image, good.label, good.key, True, source=good.source)

    def _padding(self) -> _Slot:
        self.counts["padded"] += 1
        return self._invalid()

    def _invalid(self) -> _Slot:
        if not self.spec.decode_in_worker:
            return _Slot(b"", 0, "", False, CropBox(0, 0, 1, 1, False))
        return _Slot(self._blank(), 0, "", False)

    def _collate(self, filled: list[_Slot]) -> dict[str, Any]:
        if not self.spec.decode_in_worker:
            return self._collate_encoded(filled)
        # uint8: the trainer normalises after its copy to the device (Normalize.batch).
        images = _batch_buffer((len(filled), 3, self.spec.img_size, self.spec.img_size))
        for s, out in zip(filled, images, strict=True):
            out.copy_(s.image)
        return {
            "image": images,
            "label": torch.tensor([s.label for s in filled], dtype=torch.int64),
            "key": [s.key for s in filled],
            "source": [s.source for s in filled],
            "valid": torch.tensor([s.valid for s in filled], dtype=torch.bool),
            "stats": {"consumer": self.plan.consumer, **self.counts},
        }

    def _collate_encoded(self, filled: list[_Slot]) -> dict[str, Any]:
        return {
            "encoded": [_byte_tensor(s.image) for s in filled],
            "box": torch.tensor([s.box.as_row() for s in filled], dtype=torch.int64),
            "label": torch.tensor([s.label for s in filled], dtype=torch.int64),
            "key": [s.key for s in filled],
            "source": [s.source for s in filled],
            "valid": torch.tensor([s.valid for s in filled], dtype=torch.bool),
            "stats": {"consumer": self.plan.consumer, **self.counts},
        }

    def reserve(self) -> list[_Good]:
        """The consumer's first `micro_batch_size` good samples in slot order (read lazily)."""
        if self._reserve is None:
            self._reserve = []
            for position, item in self._slots(0):
                try:
                    self._reserve.append(self._decode(item, self._source_at(position)))
                except BadSample:
                    continue
                if len(self._reserve) == self.plan.micro_batch_size:
                    break
        return self._reserve

    def _slots(self, start_slot: int) -> Iterator[tuple[int, RawSample | Missing]]:
        """(global position, raw sample) for slots start_slot..num_real-1, in slot order."""
        plan = self.plan
        uses = np.bincount(plan.order[start_slot:], minlength=len(plan.positions))
        local = np.flatnonzero(uses)
        items = zip(local.tolist(), self._read(plan.positions[local]), strict=False)
        held: dict[int, RawSample | Missing] = {}
        for j in range(start_slot, plan.num_real):
            want = int(plan.order[j])
            while want not in held:
                index, item = next(items)
                held[index] = item
            uses[want] -= 1  # a repeated sample is held until its last copy
            yield int(plan.positions[want]), held[want] if uses[want] else held.pop(want)

    def _read(self, positions: np.ndarray) -> Iterator[RawSample | Missing]:
        for shard, offsets in self.spec.plan.stream.group(positions):
            location = self.spec.shards[shard]
            if self.spec.expected is not None and shard not in self._verified:
                verify_shard(location, self.spec.root_of(shard), *self.spec.expected[shard])
                self._verified.add(shard)
            spec = self.spec
            skip = spec.skips[shard] if spec.skips else ()
            wanted = offsets.tolist()
            root = spec.root_of(shard)
            for _, item in read_shard(location, wanted, root, spec.max_member_bytes, skip):
                yield item

    def _source_at(self, position: int) -> int:
        stream = self.spec.plan.stream
        return self.spec.source_of(int(stream.order[stream.piece_of(position)]))

    def _decode(self, item: RawSample | Missing, source: int) -> _Good:
        if isinstance(item, Missing):
            raise BadSample(item.reason)
        offset = self.spec.sources[source].label_offset
        if not self.spec.decode_in_worker:
            data, size, label = parse_sample(item, **self._label_args[source])
            return _Good(data, label + offset, item.key, size, source)
        image, label = decode_sample(item, **self._label_args[source])
        return _Good(image, label + offset, item.key, source=source)

    def _augment(self, image: torch.Tensor, position: int, copy: int) -> torch.Tensor:
        if not self.train:
            return self.transform(image)
        return apply_seeded(self.transform, image, self._sample_seed(position, copy))

    def _box(self, size: tuple[int, int], position: int, copy: int) -> CropBox:
        if not self.train:
            return eval_box(*size, self.spec.augment.eval_crop_pct)
        return train_box(*size, self.spec.augment, self._sample_seed(position, copy))

    def _sample_seed(self, position: int, copy: int) -> int:
        """One augmentation seed per sample and epoch; copies of a repeated sample get their own
        (copy 0 keeps the seed a run without repeats uses)."""
        plan = self.spec.plan
        return derive_seed("sample", plan.seed, plan.epoch, position, *([copy] if copy else []))

    def _blank(self) -> torch.Tensor:
        return torch.zeros(3, self.spec.img_size, self.spec.img_size, dtype=torch.uint8)

    def _where(self, position: int, item: RawSample | Missing) -> str:
        shard, offset = self.spec.plan.stream.locate(position)
        key = f" key {item.key!r}" if isinstance(item, RawSample) else ""
        return f"{self.spec.shards[shard].uri} sample #{offset}{key}"

    def _skip(self, position: int, item: RawSample | Missing, reason: str) -> None:
        """Count, log (rate-limited) and enforce the budget of data.max_skip_fraction."""
        self.counts["skipped"] += 1
        n = self.counts["skipped"]
        if n > self.spec.max_skip_fraction * self.plan.num_real:
            raise DataError(self._budget_message(position, item, reason))
        if n & (n - 1) == 0:  # rate limit: the 1st, 2nd, 4th, 8th, ... skip of this worker
            logger.warning(
                "skipped %s: %s (%d skipped so far by consumer %d of epoch %d)",
                self._where(position, item),
                reason,
                n,
                self.plan.consumer,
                self.spec.plan.epoch,
            )

    def _budget_message(self, position: int, item: RawSample | Missing, reason: str) -> str:
        n, total = self.counts["skipped"], self.plan.num_real
        return (
            f"consumer {self.plan.consumer} (rank {self.spec.rank}) skipped {n} of its {total} "
            f"samples in epoch {self.spec.plan.epoch}, more than data.max_skip_fraction="
            f"{self.spec.max_skip_fraction}; latest: {self._where(position, item)}: {reason}. "
            "Re-create or repair the shards, or raise data.max_skip_fraction"
        )

    def _no_reserve_message(self) -> str:
        return (
            f"consumer {self.plan.consumer} (rank {self.spec.rank}) found no decodable sample "
            f"among its {self.plan.num_real} samples of epoch {self.spec.plan.epoch}; "
            "the shards are unusable"
        )
