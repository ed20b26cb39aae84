"""`ShardLoader`: the training/eval input of one rank, with a resumable (epoch, position) state.

Usage in a training loop (every rank builds its own, with its own `ctx.rank`):

    loader = ShardLoader.from_config(config, ctx, "train", train=True, img_size=224)
    loader.load_state_dict(checkpoint["loader"])       # optional; logs describe_resume()
    while step < total_steps:
        for batch in loader:                            # the rest of the current epoch
            ...; checkpoint["loader"] = loader.state_dict()
        # the loader is now at the start of the next epoch

The state is the same on every rank (ranks consume batches in lockstep), so rank 0's copy can be
saved once and loaded everywhere. `position` counts rank batches handed out, a batch counting as
consumed as soon as it is yielded.

Resuming: bit-exact with the same topology, continued without repeats on a new one; see
`loader_state` for the rules.

The training set is one shard set or a mix of several (`TrainSources`, from `data.train_shards`):
the plan reads their shards as one list with each source's share per epoch, every batch says
which source each slot came from (`source`), and labels are offset per source where
`data.mix_classes: offset` says so. `exclude` leaves samples out of every epoch as if absent.

Evaluation (`train=False`)
--------------------------
Every sample of the split exactly once across ranks, no shuffle, no drop; every rank yields the
same number of batches (ZeRO-3 forwards are collectives), padded with `valid=False` slots.

Shard verification
------------------
With `data.verify_shards: first_epoch` (the default) each consumer hashes every shard it opens,
whole, and compares it with the manifest's bytes and sha256 before using any of its samples, until
one epoch has run to its end in this process (a resumed run verifies again); `always` does so in
every epoch, `never` trusts the files. A mismatch is a `DataError` naming the shard.

Bad samples and counters
------------------------
Undecodable images, missing members, truncated or missing shards are skipped, logged at most on
the 1st, 2nd, 4th, 8th... skip of a worker, and, in training, refilled so that batch counts stay
equal. More skips than `data.max_skip_fraction` of a consumer's planned samples is a `DataError`.
`stats()` holds this rank's counters; sum them over ranks for a global metric.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader

from pipelines.config import StageConfig
from pipelines.config.data import AugmentSection, DataSection
from pipelines.data.loader.counters import LoaderCounters
from pipelines.data.loader.dataset import DatasetSpec, ShardDataset, SourceSpec
from pipelines.data.loader.device_decode import DeviceDecoder
from pipelines.data.loader.device_prefetch import DeviceBatch, prefetched
from pipelines.data.loader.exit_with_trainer import exit_with_this_process
from pipelines.data.loader.loader_state import (
    LoaderState,
    decode_state,
    encode_state,
    exclusion_digest,
)
from pipelines.data.loader.read_plan import (
    EpochPlan,
    Segment,
    Topology,
    excluded_offsets,
    plan_eval,
    plan_train_epoch,
    train_batches_per_rank,
)
from pipelines.data.loader.shard_files import check_shard_files
from pipelines.data.loader.train_sources import TrainSource, TrainSources, open_train_sources
from pipelines.data.manifest import Manifest, check_shard_name
from pipelines.distributed import DistContext
from pipelines.errors import DataError
from pipelines.seeds import derive_seed
from pipelines.storage import Location

logger = logging.getLogger(__name__)


class ShardLoader:
    """Batches of one rank from a manifest-described shard set; see the module docstring.

    Batches are dicts: `image` float32 (B, 3, img_size, img_size) normalised, `label` int64 (B,),
    `key` list[str], `valid` bool (B,). In training every slot is valid (bad samples are refilled);
    in evaluation padding and bad samples have valid=False, a zero image, label 0 and key ''.
    """

    def __init__(
        self,
        root: str | Location | TrainSources,
        split: str,
        *,
        rank: int,
        world_size: int,
        micro_batch_size: int,
        seed: int,
        data: DataSection,
        augment: AugmentSection,
        img_size: int,
        train: bool = True,
        manifest: Manifest | None = None,
        multiprocessing_context: str | None = None,
        device: torch.device | None = None,
        decode_on: torch.device | None = None,
        exclude: Mapping[str, Sequence[int]] | None = None,
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
        if not isinstance(root, TrainSources):
            root = TrainSources.single(root, manifest)
        self.sources = root
        self.root = root.sources[0].root
        self.manifest = root.sources[0].manifest
        self.split = split
        self._source_specs = tuple(self._open_source(s, split) for s in root.sources)
        self._shard_infos = root.shards(split)
        self._first_shards = root.first_shards(split)
        self._shards = tuple(
            spec.root.join(shard.name)
            for spec, info in zip(self._source_specs, root.split(split), strict=True)
            for shard in info.shards
        )
        self._excluded = excluded_offsets(self._shard_infos, self._by_index(exclude))
        self.exclude_digest = exclusion_digest(self._shard_infos, self._excluded)
        self._mix = root.shares(split, self._excluded) if train else None
        self._epoch_samples = root.epoch_samples(split, self._excluded)
        self.rank = rank
        self.seed = seed
        self.train = train
        self.data = data
        self.augment = augment
        self.img_size = img_size
        self.multiprocessing_context = multiprocessing_context
        # Batches are copied here one step ahead; None: they stay in (pinned) host memory.
        self.device = device
        # Where images are decoded, cropped and normalised; None: in the dataloader workers.
        self.decode_on = decode_on
        self.topology = Topology(
            world_size,
            data.num_workers,
            micro_batch_size,
            data.shuffle_buffer if train else 0,
            data.repeated_aug if train else 1,
        )
        self.fingerprint = root.fingerprint(split)
        self._epoch = 0
        self._position = 0
        self._history: tuple[Segment, ...] = ()
        self._plan_cache: tuple[tuple, EpochPlan] | None = None
        self._counters = LoaderCounters()
        self._resume_note = "fresh start (no loader state loaded)"
        # Worker batches (uint8 or encoded images) -> normalised float32 on the device.
        self._decoder = (
            None
            if decode_on is None
            else DeviceDecoder(decode_on, img_size, augment.mean, augment.std, train=train)
        )
        self._epochs_run = 0  # epochs (or rests of epochs) run to their end
        self._plan()  # an impossible plan fails here, before any process starts

    @classmethod
    def from_config(
        cls,
        config: StageConfig,
        ctx: DistContext,
        split: str,
        *,
        train: bool,
        img_size: int,
        root: str | Location | TrainSources | None = None,
        manifest: Manifest | None = None,
        device: torch.device | None = None,
        decode_on: torch.device | None = None,
        exclude: Mapping[str, Sequence[int]] | None = None,
    ) -> ShardLoader:
        """The loader of rank `ctx.rank` of `ctx.world_size` for `split` of `root`.

        Every call site (the trainer's train and val loaders, the few-shot probe, the eval stage)
        builds its loader here: `root` defaults to `data.train_shards` (one shard set or a mix);
        micro-batch and seed come from `train:`, workers, buffers and verification from `data:`,
        crops from `augment:`. `exclude` (shard sha256 -> in-shard sample offsets) leaves those
        samples out of every training epoch as if the shards did not hold them.
        """
        return cls(
            root or open_train_sources(config.data),
            split,
            rank=ctx.rank,
            world_size=ctx.world_size,
            micro_batch_size=config.train.micro_batch_size,
            seed=config.train.seed,
            data=config.data,
            augment=config.augment,
            img_size=img_size,
            train=train,
            manifest=manifest,
            device=device,
            decode_on=decode_on,
            exclude=exclude,
        )

    def _open_source(self, source: TrainSource, split: str) -> SourceSpec:
        """A source's shard names and files checked, before any plan is sized from them."""
        info = source.manifest.split(split)
        for shard in info.shards:  # also checked on read; a manifest built in code is data too
            check_shard_name(shard.name, source.root.uri)
        if not source.manifest.classes:
            raise DataError(f"{source.root.uri}: the manifest lists no classes")
        # Format 2 manifests (indexed WebDataset shards) keep their shards elsewhere.
        shards_root = source.manifest.shards_root(source.root, split)
        check_shard_files(shards_root, [shards_root.join(s.name) for s in info.shards], info.shards)
        return SourceSpec(
            shards_root,
            source.manifest.num_classes,
            source.manifest.label_key,
            source.manifest.classes,
            source.label_offset,
        )

    def _by_index(self, exclude: Mapping[str, Sequence[int]] | None) -> dict[int, Sequence[int]]:
        """`exclude` keyed by shard sha256 -> keyed by index in the shard list (every shard
        with that content); a sha256 that names no shard of the set is a `DataError`."""
        if not exclude:
            return {}
        where: dict[str, list[int]] = {}
        for index, shard in enumerate(self._shard_infos):
            where.setdefault(shard.sha256, []).append(index)
        unknown = sorted(set(exclude) - set(where))
        if unknown:
            raise DataError(
                f"excluded samples name {len(unknown)} shard(s) that split {self.split!r} of "
                f"{self.root.uri} does not hold (sha256 {unknown[0][:16]}...); the exclusion "
                "list was written for another shard set"
            )
        return {i: offsets for sha, offsets in exclude.items() for i in where[sha]}

    @property
    def source_names(self) -> tuple[str, ...]:
        """The training set's sources (a batch's `source` entries index this)."""
        return self.sources.names

    # -- epochs and sizes ------------------------------------------------------------------

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def position(self) -> int:
        """Rank batches already handed out in the current epoch (segment)."""
        return self._position

    @property
    def batches_per_epoch(self) -> int:
        """Batches every rank yields in a whole epoch with this loader's topology."""
        if not self.train:
            return self._plan().batches_per_rank
        return train_batches_per_rank(self._epoch_samples, self.topology)

    @property
    def epoch_batches(self) -> int:
        """Batches of the current epoch: fewer than batches_per_epoch only after a re-split."""
        return self._plan().batches_per_rank

    @property
    def remaining_batches(self) -> int:
        return self.epoch_batches - self._position

    def set_epoch(self, epoch: int) -> None:
        """Start epoch `epoch` from its beginning; a no-op for the current epoch (keeps position).

        So the DistributedSampler habit of calling set_epoch(epoch) before each epoch continues a
        resumed epoch instead of restarting it.
        """
        if epoch != self._epoch:
            self._epoch, self._position, self._history = epoch, 0, ()

    def _plan(self) -> EpochPlan:
        key = (self._epoch, self._history)
        if self._plan_cache is None or self._plan_cache[0] != key:
            if self.train:
                plan = plan_train_epoch(
                    self._shard_infos,
                    seed=self.seed,
                    epoch=self._epoch,
                    topology=self.topology,
                    history=self._history,
                    split=self.split,
                    exclude=self._excluded,
                    mix=self._mix,
                )
            else:
                plan = plan_eval(self._shard_infos, topology=self.topology)
            self._plan_cache = (key, plan)
        return self._plan_cache[1]

    # -- iteration ---------------------------------------------------------------------------

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Yield the remaining batches of the current epoch, then move to the next epoch."""
        if self._position >= self._plan().batches_per_rank:  # finished but not yet advanced
            self._epoch, self._position, self._history = self._epoch + 1, 0, ()
        yield from self._run(self._plan())
        self._epoch, self._position, self._history = self._epoch + 1, 0, ()

    def _run(self, plan: EpochPlan) -> Iterator[dict[str, Any]]:
        spec = DatasetSpec(
            shards=self._shards,
            sources=self._source_specs,
            first_shards=self._first_shards,
            max_member_bytes=self.data.max_member_bytes,
            plan=plan,
            rank=self.rank,
            start_position=self._position,
            max_pixels=self.data.max_pixels,
            max_skip_fraction=self.data.max_skip_fraction,
            img_size=self.img_size,
            augment=self.augment,
            decode_in_worker=self.decode_on is None,
            expected=self._expected() if self._verify_next_run() else None,
            skips=tuple(s.skip for s in self._shard_infos),
        )
        workers = self.data.num_workers
        pin = (
            self.data.pin_memory if self.data.pin_memory is not None else torch.cuda.is_available()
        )
        loader = DataLoader(
            ShardDataset(spec),
            batch_size=None,
            num_workers=workers,
            prefetch_factor=self.data.prefetch_factor if workers else None,
            pin_memory=pin,
            multiprocessing_context=_worker_context(
                self.multiprocessing_context or self.data.worker_start_method
            )
            if workers
            else None,
            worker_init_fn=exit_with_this_process() if workers else None,  # no orphans
            # Its own generator: creating the iterator must not draw from torch's global RNG,
            # or a resumed run's dropout/drop-path stream would shift against the original.
            generator=torch.Generator().manual_seed(derive_seed("dataloader", self.seed)),
        )
        self._counters.fold()
        batches = self._checked(loader)
        stage = self._decoder or DeviceBatch(
            self.device or "cpu", self.augment.mean, self.augment.std
        )
        batches = (
            map(stage, batches) if self.device is None else prefetched(batches, stage, self.device)
        )
        try:
            for batch in batches:
                # Counted when handed out, not when read ahead: a checkpoint taken now resumes
                # at the first batch the step has not seen.
                self._position += 1
                yield batch
            self._epochs_run += 1
        finally:
            self._counters.fold()

    def _verify_next_run(self) -> bool:
        """data.verify_shards: 'first_epoch' hashes the shards until one epoch (or the rest of a
        resumed one) has run to its end in this process, 'always' in every epoch."""
        mode = self.data.verify_shards
        return mode == "always" or (mode == "first_epoch" and not self._epochs_run)

    def _expected(self) -> tuple[tuple[int, str], ...]:
        return tuple((s.bytes, s.sha256) for s in self._shard_infos)

    def _checked(self, loader: DataLoader) -> Iterator[dict[str, Any]]:
        for batch in loader:
            if "error" in batch:
                raise DataError(batch["error"])
            self._counters.update(batch.pop("stats"))
            yield batch

    def stats(self) -> dict[str, int | float]:
        """This rank's counters since construction: samples read, skipped, refilled, padded."""
        return self._counters.stats(self._decoder.failed if self._decoder is not None else 0)

    # -- state -------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Where this loader is: JSON-serialisable, identical on every rank."""
        epoch, position, history = self._epoch, self._position, self._history
        if position >= self._plan().batches_per_rank:  # the epoch is done: point at the next
            epoch, position, history = epoch + 1, 0, ()
        return encode_state(
            LoaderState(
                self.split,
                self.fingerprint,
                self.seed,
                epoch,
                position,
                self.topology,
                history,
                self.exclude_digest,
            )
        )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state`; see the module docstring for what a topology change does."""
        saved = decode_state(
            state,
            split=self.split,
            fingerprint=self.fingerprint,
            seed=self.seed,
            where=self.root.uri,
            exclude=self.exclude_digest,
        )
        old, epoch, position, history = saved.topology, saved.epoch, saved.position, saved.history
        if not self.train:
            same = old == self.topology
            self._epoch, self._position, self._history = epoch, position if same else 0, ()
            self._resume_note = f"eval loader restored at batch {self._position}"
            return
        if old == self.topology:
            self._epoch, self._position, self._history = epoch, position, history
            total = self._plan().batches_per_rank
            if position > total:
                raise DataError(
                    f"loader state position {position} is beyond the {total} batches of epoch "
                    f"{epoch}; the state does not match this shard set"
                )
            self._resume_note = (
                f"resumed epoch {epoch} at batch {position} of {total} per rank with the same "
                f"topology ({self.topology.describe()}): the run continues exactly"
            )
            return
        if position:
            history = (*history, Segment(old, position))
        self._epoch, self._position, self._history = epoch, 0, history
        plan = self._plan()
        self._resume_note = (
            f"topology changed from {old.describe()} to {self.topology.describe()}: "
            f"epoch {epoch} continues; {plan.consumed_before} of its {plan.stream.num_samples} "
            f"samples were already consumed, the remaining {plan.pool_size} are re-split into "
            f"{plan.batches_per_rank} batches per rank ({plan.dropped} dropped as the "
            "remainder); the next epoch starts whole with the new topology"
        )

    def describe_resume(self) -> str:
        """One line for the logs: what the last load_state_dict did."""
        return self._resume_note


@functools.cache
def _worker_context(method: str) -> multiprocessing.context.BaseContext:
    """Forkserver workers are safe in threaded hosts (Ray workers) where a plain fork can
    deadlock; preloading torch and the dataset into the server makes each later worker start
    in ~0.1 s instead of re-importing torch."""
    if method == "forkserver":
        multiprocessing.set_forkserver_preload(["torch", "pipelines.data.loader.dataset"])
    return multiprocessing.get_context(method)
