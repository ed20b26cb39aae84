"""`data.train_shards` as a training set: one shard set, or a mix of several (a list of
`{shards, weight}` or `{shards, repeat}`), with the one class list the model is trained on.

Each source's manifest is read once; its shards are laid end to end into one combined shard
list (source 0's first), which the epoch plan reads with each source's share per epoch
(`SourceShare`). Shares follow MosaicML Streaming's `Stream(proportion=..., repeat=...)`: with
weights the epoch holds as many samples as all sources together and source s gets
floor(total x w_s / sum w) of them (the largest remainders get the few left over, first source
first), with repeats source s gets floor(repeat_s x its samples).

Classes: sources whose manifests list the same classes share them. When they differ the config
must say how (`data.mix_classes`): `shared` keeps every label id as it is (one label space, the
longest class list names it), `offset` puts each source's ids after the previous source's
(classes concatenated). Otherwise a `ConfigError` says so in one line.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from pipelines.config.data import DataSection, MixSourceSection
from pipelines.data.loader.epoch_stream import SourceShare, kept_counts
from pipelines.data.loader.loader_state import split_fingerprint
from pipelines.data.manifest import MANIFEST_NAME, Manifest, ShardInfo, SplitInfo, read_manifest
from pipelines.errors import ConfigError, DataError
from pipelines.storage import Location, locate


@dataclass(frozen=True)
class TrainSource:
    """One shard set of the training set and where its labels go."""

    name: str
    root: Location  # the manifest's folder
    manifest: Manifest
    weight: float | None
    repeat: float | None
    label_offset: int = 0  # added to every label of this source (data.mix_classes: offset)


@dataclass(frozen=True)
class TrainSources:
    sources: tuple[TrainSource, ...]
    classes: tuple[str, ...]

    @classmethod
    def single(cls, root: str | Location, manifest: Manifest | None = None) -> TrainSources:
        """One shard set, taken once per epoch (`manifest`: already read, else read here)."""
        where = locate(root) if isinstance(root, str) else root
        manifest = manifest if manifest is not None else read_manifest(where)
        only = TrainSource(_folder_name(where.uri), where, manifest, None, 1.0)
        return cls((only,), manifest.classes)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.sources)

    def split(self, name: str) -> tuple[SplitInfo, ...]:
        """Each source's split `name`, in source order."""
        return tuple(s.manifest.split(name) for s in self.sources)

    def shards(self, split: str) -> tuple[ShardInfo, ...]:
        """The combined shard list: every source's shards of `split`, source 0's first."""
        return tuple(shard for info in self.split(split) for shard in info.shards)

    def first_shards(self, split: str) -> tuple[int, ...]:
        """Index in the combined list of each source's first shard."""
        sizes = [len(info.shards) for info in self.split(split)]
        return tuple(int(x) for x in np.concatenate([[0], np.cumsum(sizes)[:-1]]))

    def shares(
        self, split: str, excluded: Mapping[int, np.ndarray]
    ) -> tuple[SourceShare, ...] | None:
        """Each source's samples per epoch, or None when the set is one source taken once (the
        plain plan, bit for bit what a single `train_shards` path gives)."""
        infos = self.split(split)
        kept = kept_counts(self.shards(split), excluded)
        firsts = self.first_shards(split)
        available = [
            int(kept[first : first + len(info.shards)].sum())
            for first, info in zip(firsts, infos, strict=True)
        ]
        for source, count in zip(self.sources, available, strict=True):
            if not count:
                raise DataError(
                    f"training source {source.name!r} ({source.root.uri}) has no samples in "
                    f"split {split!r}"
                )
        choose = _choose(self.sources, available)
        if len(self.sources) == 1 and choose[0] == available[0]:
            return None
        return tuple(
            SourceShare(first, len(info.shards), n)
            for first, info, n in zip(firsts, infos, choose, strict=True)
        )

    def epoch_samples(self, split: str, excluded: Mapping[int, np.ndarray] | None = None) -> int:
        """Samples a training epoch streams: every source's share, or every kept sample."""
        excluded = excluded or {}
        shares = self.shares(split, excluded)
        if shares is not None:
            return sum(share.choose for share in shares)
        return int(kept_counts(self.shards(split), excluded).sum())

    def fingerprint(self, split: str) -> str:
        """What a loader state must match to resume: one source's shard-list fingerprint (as
        before mixing existed), or for a mix every source's, its share and its label offset."""
        infos = self.split(split)
        if len(self.sources) == 1 and self.sources[0].label_offset == 0:
            only = self.sources[0]
            if only.weight is not None or only.repeat == 1:
                return split_fingerprint(split, infos[0], only.manifest.label_key)
        described = [
            [split_fingerprint(split, info, s.manifest.label_key), s.weight, s.repeat]
            + [s.label_offset]
            for s, info in zip(self.sources, infos, strict=True)
        ]
        text = json.dumps({"mix": described}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def open_train_sources(data: DataSection) -> TrainSources:
    """Read every training source's manifest and settle the class list (`data.mix_classes`)."""
    entries = data.train_sources
    manifests = [read_manifest(entry.shards) for entry in entries]
    names = _names(entries)
    classes, offsets = _classes(names, manifests, data.mix_classes)
    sources = tuple(
        TrainSource(name, locate(entry.shards), manifest, entry.weight, entry.repeat, offset)
        for name, entry, manifest, offset in zip(names, entries, manifests, offsets, strict=True)
    )
    return TrainSources(sources, classes)


def check_mix_classes(data: DataSection) -> None:
    """`vitpipe check-config`: a mix whose sources' classes disagree with no `data.mix_classes`
    chosen is a `ConfigError`; only the manifests that exist yet are read (a source may be the
    shard stage's output)."""
    if not isinstance(data.train_shards, list):
        return
    names = _names(data.train_sources)
    found = [
        (name, locate(entry.shards))
        for name, entry in zip(names, data.train_sources, strict=True)
        if locate(entry.shards).join(MANIFEST_NAME).is_file()
    ]
    if found:
        manifests = [read_manifest(where) for _, where in found]
        _classes([name for name, _ in found], manifests, data.mix_classes)


def _names(entries: Sequence[MixSourceSection]) -> list[str]:
    """Each source's `name`, else its folder's name (made unique with -2, -3, ...)."""
    names: list[str] = []
    for entry in entries:
        base = entry.name or _folder_name(entry.shards)
        name, n = base, 1
        while name in names:
            n += 1
            name = f"{base}-{n}"
        names.append(name)
    return names


def _folder_name(path: str) -> str:
    tail = path.rstrip("/").rpartition("/")[2].split("?")[0]
    cleaned = "".join(c if c.isalnum() or c in "_.-" else "_" for c in tail).strip("._-")
    return cleaned[:64] or "source"


def _classes(
    names: Sequence[str], manifests: Sequence[Manifest], mix_classes: str | None
) -> tuple[tuple[str, ...], list[int]]:
    """The training set's classes and each source's label offset."""
    lists = [m.classes for m in manifests]
    if mix_classes == "offset":
        offsets = [int(x) for x in np.concatenate([[0], np.cumsum([len(c) for c in lists])[:-1]])]
        return tuple(c for classes in lists for c in classes), offsets
    if mix_classes is None and any(c != lists[0] for c in lists):
        shown = ", ".join(
            f"{n}: {len(c)} classes ({', '.join(c[:3])}{', ...' if len(c) > 3 else ''})"
            for n, c in zip(names, lists, strict=True)
        )
        raise ConfigError(
            f"data.train_shards: the sources' classes differ ({shown}); set data.mix_classes: "
            "shared (every label id as it is, one label space) or offset (each source's "
            "classes after the previous source's)"
        )
    return max(lists, key=len), [0] * len(lists)


def _choose(sources: Sequence[TrainSource], available: Sequence[int]) -> list[int]:
    """Samples per epoch of each source: Streaming's proportion (weights) or repeat rule."""
    if sources[0].weight is None:
        return [int(s.repeat * n) for s, n in zip(sources, available, strict=True)]
    total = sum(available)
    weights = np.array([s.weight for s in sources], dtype=np.float64)
    exact = total * weights / weights.sum()
    choose = np.floor(exact).astype(np.int64)
    short = total - int(choose.sum())
    by_remainder = sorted(range(len(sources)), key=lambda i: (-(exact[i] - choose[i]), i))
    for i in by_remainder[:short]:
        choose[i] += 1
    return [int(x) for x in choose]
