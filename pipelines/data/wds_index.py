"""Index users' own WebDataset shards in place (`shard.source.kind: webdataset`), no rewrite.

    plan = plan_index(section, max_member_bytes)     # driver: expand urls, split, settings
    results = [index_shard(plan.job, t) for t in plan.tasks]   # Ray tasks in `launch/`
    manifest, rejected = finish_index(plan, results)  # manifest.json (format 2) + rejected.parquet

Each task reads one shard front to back once: it hashes every byte (sha256 for the manifest, so
the loader can verify the shard later) and walks its samples with the loader's own tar reader
(`iter_runs`, webdataset's grouping rules). A sample without an image member, or whose label is
missing or unusable (`pipelines.data.labels`), is not part of the set: its run index goes into
the shard's `skip` list and a row into `rejected.parquet`. A shard that cannot be read to its end
keeps the samples before the failure and gets one `truncated_shard` row for its tail.

Per-shard results are kept in `<output>/_state/index/<split>/<name>.json` with the shard's size
and mtime; a re-run reuses every result whose shard has the same size and mtime and whose
settings (label key, classes) are the same, and reads the rest. A shard rewritten in place with
its size and mtime restored looks unchanged: `rehash` (`vitpipe shard --rehash [NAME ...]`)
reads it again all the same, which is what the loader's verification error tells the user.

Shards named by a brace pattern or a list are checked against one listing of their folder (a
few requests per thousand names, not one per name); the missing ones get no task, only a
`file_missing` row each in `rejected.parquet`.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Collection
from dataclasses import asdict, dataclass
from typing import Any

import braceexpand
import pyarrow.fs as pafs

from pipelines.config import ShardSection
from pipelines.data.labels import LabelError, image_field, label_index, raw_label
from pipelines.data.loader.tar_reader import READ_ERRORS, iter_runs
from pipelines.data.manifest import (
    INDEX_FORMAT_VERSION,
    MANIFEST_NAME,
    Manifest,
    ShardInfo,
    SplitInfo,
    check_shard_name,
)
from pipelines.data.rejects import REJECTED_NAME, count_reasons, write_rejects
from pipelines.data.sources.base import Rejected
from pipelines.data.sources.webdataset import WebDatasetSection
from pipelines.errors import DataError
from pipelines.seeds import derive_seed
from pipelines.storage import Location, RefusedFile, locate

STATE_DIR = "_state/index"
_HASH_CHUNK = 1 << 20
MAX_CLASSES_FILE_BYTES = 64 * 2**20


@dataclass(frozen=True)
class IndexSettings:
    """What every index task needs besides its shard; sent to the workers once."""

    output: Location
    label_key: str
    classes: tuple[str, ...] | None  # from shard.source.classes_file; None: from the labels
    max_member_bytes: int
    max_classes: int  # a bound, not a setting: results do not depend on it

    @property
    def fingerprint(self) -> str:
        text = json.dumps([self.label_key, self.classes, self.max_member_bytes])
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class IndexTask:
    split: str
    name: str
    root: Location  # the split's shards_root
    rehash: bool = False  # read it even if its size and mtime are what the state recorded


@dataclass(frozen=True)
class ShardIndex:
    """One shard's entry: size, hash, its runs, the ones that are not samples, label counts."""

    split: str
    name: str
    bytes: int
    sha256: str
    runs: int
    skip: tuple[int, ...]
    labels: tuple[tuple[int | str, int], ...]  # (raw label, count) of the samples
    rejected: tuple[Rejected, ...]
    skipped: bool = False  # reused from the state of an earlier run
    elapsed_s: float = 0.0

    @property
    def samples(self) -> int:
        return self.runs - len(self.skip)


@dataclass(frozen=True)
class IndexPlan:
    job: IndexSettings
    tasks: tuple[IndexTask, ...]
    roots: dict[str, str]  # split -> shards_root as the manifest records it
    source: dict[str, Any]
    missing: tuple[Rejected, ...] = ()  # named shards that are not in their folder


@dataclass(frozen=True)
class ShardNames:
    """A split's shards: their folder, the names found there, and the names that are not."""

    root: Location
    names: list[str]
    missing: list[str]


def expand_urls(spec: str | list[str], field: str) -> ShardNames:
    """The shards of brace patterns, a directory, or a list of either; every shard must sit
    directly in one folder (the split's `shards_root`), which is listed once."""
    patterns = [spec] if isinstance(spec, str) else list(spec)
    urls = [url for pattern in patterns for url in braceexpand.braceexpand(pattern)]
    if len(urls) == 1 and not urls[0].endswith(".tar"):
        folder = locate(urls[0])
        names = sorted(
            e.base_name
            for e in folder.fs.get_file_info(_selector(folder))
            if e.base_name.endswith(".tar") and e.type != pafs.FileType.Directory
        )
        if not names:
            raise DataError(f"shard.source.{field}={spec!r}: no .tar files in {folder.uri}")
        return ShardNames(folder, names, [])
    parents = {url.rstrip("/").rsplit("/", 1)[0] for url in urls}
    if len(parents) != 1 or any("/" not in url for url in urls):
        raise DataError(
            f"shard.source.{field}: every shard of a split must be in one folder; got "
            f"{len(parents)} folders ({', '.join(sorted(parents)[:3])}...)"
        )
    names = [url.rsplit("/", 1)[1] for url in urls]
    for name in names:
        check_shard_name(name, f"shard.source.{field}")
    if len(set(names)) != len(names):
        raise DataError(f"shard.source.{field}: a shard is listed twice")
    root = locate(parents.pop())
    listed = {e.base_name for e in root.fs.get_file_info(_selector(root))}
    missing = [name for name in names if name not in listed]
    if len(missing) == len(names):
        raise DataError(
            f"shard.source.{field}: none of the {len(names)} shards it names exist in "
            f"{root.uri} (first: {names[0]})"
        )
    return ShardNames(root, [name for name in names if name in listed], missing)


def _selector(folder: Location) -> pafs.FileSelector:
    return pafs.FileSelector(folder.path, allow_not_found=True)


def plan_index(
    section: ShardSection, max_member_bytes: int, rehash: bool | Collection[str] = False
) -> IndexPlan:
    """The index job and its tasks (driver side, deterministic); `max_member_bytes` is the
    loader's cap (data.max_member_bytes), so both read the same samples. `rehash`: True reads
    every shard again, names (or URIs) read those; an unknown name is an error."""
    source = section.source
    assert isinstance(source, WebDatasetSection), source.kind
    train = expand_urls(source.urls, "urls")
    missing = [("urls", train.root, name) for name in train.missing]
    splits = {"train": (train.root, train.names)}
    if source.val_urls:
        val = expand_urls(source.val_urls, "val_urls")
        splits["val"] = (val.root, val.names)
        missing += [("val_urls", val.root, name) for name in val.missing]
    elif section.val_fraction > 0:
        splits["train"], splits["val"] = _split_by_shards(
            train.root, train.names, section.val_fraction, section.seed
        )
    classes = _read_classes(source.classes_file)
    if classes is not None and len(classes) > source.max_classes:
        raise DataError(
            f"shard.source.classes_file={source.classes_file!r} names {len(classes)} classes, "
            f"over shard.source.max_classes={source.max_classes}"
        )
    job = IndexSettings(
        locate(section.output), source.label_key, classes, max_member_bytes, source.max_classes
    )
    chosen = _rehash_names(rehash, splits)
    tasks = tuple(
        IndexTask(split, name, root, rehash=name in chosen)
        for split, (root, names) in splits.items()
        for name in names
    )
    roots = {split: root.uri for split, (root, _) in splits.items()}
    gone = tuple(
        Rejected(name, "file_missing", f"{root.join(name).uri}: named by shard.source.{field}")
        for field, root, name in missing
    )
    return IndexPlan(job, tasks, roots, source.describe(), gone)


def _rehash_names(
    rehash: bool | Collection[str], splits: dict[str, tuple[Location, list[str]]]
) -> set[str]:
    """The shard names `rehash` picks: all for True, else those named (by name or URI)."""
    if isinstance(rehash, bool):
        return {name for _, names in splits.values() for name in names} if rehash else set()
    known = {
        spelling: name
        for root, names in splits.values()
        for name in names
        for spelling in (name, root.join(name).uri)
    }
    unknown = [given for given in rehash if given not in known]
    if unknown:
        raise DataError(
            f"--rehash {unknown[0]}: not a shard of shard.source.urls or val_urls (give a "
            "shard's name or URI, as the loader's error names it)"
        )
    return {known[given] for given in rehash}


def _split_by_shards(
    root: Location, names: list[str], fraction: float, seed: int
) -> tuple[tuple[Location, list[str]], tuple[Location, list[str]]]:
    """Whole shards for val: the `round(n * fraction)` (at least 1) first in a seeded order."""
    if len(names) < 2:
        raise DataError(
            f"shard.val_fraction={fraction} needs at least 2 shards in shard.source.urls (val "
            "takes whole shards); give shard.source.val_urls instead"
        )
    count = min(len(names) - 1, max(1, round(len(names) * fraction)))
    ranked = sorted(names, key=lambda n: derive_seed("val-shards", seed, n))
    val = set(ranked[:count])
    return (root, [n for n in names if n not in val]), (root, [n for n in names if n in val])


def _read_classes(path: str | None) -> tuple[str, ...] | None:
    if path is None:
        return None
    text = locate(path).read_regular(MAX_CLASSES_FILE_BYTES).decode("utf-8-sig")
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    if not names or len(set(names)) != len(names):
        raise DataError(f"shard.source.classes_file={path!r}: needs unique names, one per line")
    return names


# -- one task --------------------------------------------------------------------------------


class _HashingReader:
    """A file object that hashes and counts everything read through it."""

    def __init__(self, handle):
        self.handle, self.digest, self.size = handle, hashlib.sha256(), 0

    def read(self, n: int = -1) -> bytes:
        data = self.handle.read(n)
        self.digest.update(data)
        self.size += len(data)
        return data

    def drain(self) -> None:
        while self.read(_HASH_CHUNK):
            pass


def index_shard(job: IndexSettings, task: IndexTask) -> ShardIndex:
    """Index one shard (or reuse its result when the shard's size and mtime are unchanged and
    the task does not ask for a rehash)."""
    started = time.perf_counter()
    shard = task.root.join(task.name)
    info = shard.fs.get_file_info(shard.path)
    stamp = [info.size, info.mtime_ns]
    state = _state_file(job, task)
    previous = None if task.rehash else _load_state(state, job, stamp)
    if previous is not None:
        return _within_class_bound(job, shard, previous)
    classes = {name: i for i, name in enumerate(job.classes or ())}
    runs, skip, rejected, labels = 0, [], [], {}
    try:
        handle = shard.open_regular(task.root)
    except (FileNotFoundError, RefusedFile) as err:
        reason = getattr(err, "reason", "file_missing")
        missing = Rejected(task.name, reason, f"{shard.uri}: {err}")
        return ShardIndex(task.split, task.name, 0, "", 0, (), (), (missing,))
    with handle:
        reader = _HashingReader(handle)
        try:
            for run in iter_runs(reader, job.max_member_bytes):
                runs += 1
                reason = _problem(run.sample.fields, job, classes)
                if reason is None:
                    value = raw_label(run.sample.fields, job.label_key)
                    labels[value] = labels.get(value, 0) + 1
                    continue
                skip.append(run.index)
                detail = f"sample #{run.index}: {reason[1]}"
                rejected.append(Rejected(task.name, reason[0], detail, run.sample.key))
        except READ_ERRORS as err:
            detail = f"unreadable after sample #{runs - 1} ({type(err).__name__}: {err})"
            rejected.append(Rejected(task.name, "truncated_shard", detail))
        reader.drain()
    result = ShardIndex(
        task.split,
        task.name,
        reader.size,
        reader.digest.hexdigest(),
        runs,
        tuple(skip),
        tuple(sorted(labels.items(), key=lambda kv: (isinstance(kv[0], str), kv[0]))),
        tuple(rejected),
        elapsed_s=time.perf_counter() - started,
    )
    _within_class_bound(job, shard, result)
    record = {"settings": job.fingerprint, "stamp": stamp, "result": _to_json(result)}
    state.write_bytes_atomic(json.dumps(record).encode())
    return result


def _within_class_bound(job: IndexSettings, shard: Location, result: ShardIndex) -> ShardIndex:
    """`result`, unless one of its integer labels would make more than `max_classes` classes
    (checked in the task, so a bad shard stops the stage before the rest are read)."""
    numbers = [value for value, _ in result.labels if isinstance(value, int)]
    if job.classes is None and numbers and max(numbers) >= job.max_classes:
        raise DataError(
            f"{shard.uri}: label {max(numbers)} would make {max(numbers) + 1} classes, over "
            f"shard.source.max_classes={job.max_classes}; fix the shard's labels, or raise "
            "the bound if you mean that many classes"
        )
    return result


def _problem(
    fields: dict[str, bytes], job: IndexSettings, classes: dict[str, int]
) -> tuple[str, str] | None:
    """(reason, detail) when the sample is not usable for training, else None."""
    if image_field(fields) is None:
        return "no_image", f"no image member; it has {sorted(fields) or 'none'}"
    try:
        value = raw_label(fields, job.label_key)
        if job.classes is not None:
            label_index(value, classes, len(job.classes))
        elif isinstance(value, int) and value < 0:
            raise LabelError("label_out_of_range", f"label {value} is negative")
    except LabelError as err:
        return err.reason, str(err)
    return None


def _state_file(job: IndexSettings, task: IndexTask) -> Location:
    return job.output.join(*STATE_DIR.split("/"), task.split, f"{task.name}.json")


def _to_json(result: ShardIndex) -> dict[str, Any]:
    data = asdict(result)
    data["rejected"] = [[r.source_id, r.reason, r.detail, r.key] for r in result.rejected]
    return data


def _load_state(state: Location, job: IndexSettings, stamp: list) -> ShardIndex | None:
    try:
        record = json.loads(state.read_bytes())
        if record["settings"] != job.fingerprint or record["stamp"] != stamp:
            return None
        data = dict(record["result"])
        data["skip"] = tuple(data["skip"])
        data["labels"] = tuple((value, count) for value, count in data["labels"])
        data["rejected"] = tuple(Rejected(*row) for row in data["rejected"])
        data["skipped"] = True
        return ShardIndex(**data)
    except (OSError, ValueError, KeyError, TypeError, AssertionError):
        return None


# -- the manifest ----------------------------------------------------------------------------


def finish_index(plan: IndexPlan, results: list[ShardIndex]) -> tuple[Manifest, list[Rejected]]:
    """Write `rejected.parquet` and `manifest.json` (format 2) from every shard's result."""
    classes = _classes(plan.job, results)
    rejected = [*plan.missing, *(r for result in results for r in result.rejected)]
    splits: dict[str, list[ShardInfo]] = {split: [] for split in plan.roots}
    for result in results:
        if result.samples:
            splits[result.split].append(
                ShardInfo(result.name, result.samples, result.bytes, result.sha256, result.skip)
            )
    if not splits["train"]:
        raise DataError(
            f"shard.source.urls: no usable sample in any train shard ({count_reasons(rejected)})"
        )
    manifest = Manifest(
        classes=classes,
        splits={
            split: SplitInfo(tuple(shards), plan.roots[split]) for split, shards in splits.items()
        },
        source=plan.source,
        extra={
            "num_rejected": sum(1 for r in rejected if r.key),
            "rejected": REJECTED_NAME,
            "index_settings": plan.job.fingerprint,
        },
        format_version=INDEX_FORMAT_VERSION,
        label_key=plan.job.label_key,
    )
    output = plan.job.output
    write_rejects(output, rejected)
    path = output.join(MANIFEST_NAME)
    new = (json.dumps(manifest.to_json(), indent=2) + "\n").encode()
    if not (path.is_file() and path.read_bytes() == new):
        path.write_bytes_atomic(new)
    return manifest, rejected


def _classes(job: IndexSettings, results: list[ShardIndex]) -> tuple[str, ...]:
    if job.classes is not None:
        return job.classes
    values = {value for result in results for value, _ in result.labels}
    names = {v for v in values if isinstance(v, str)}
    numbers = {v for v in values if isinstance(v, int)}
    if names and numbers:
        raise DataError(
            "the shards' labels are both integers and names; give shard.source.classes_file "
            "(one class name per line) to say which index each name has"
        )
    if len(names) > job.max_classes:
        raise DataError(
            f"the shards' labels name {len(names)} classes, over shard.source.max_classes="
            f"{job.max_classes}; raise the bound if you mean that many classes"
        )
    if names:
        return tuple(sorted(names))
    return tuple(str(i) for i in range(max(numbers, default=-1) + 1))
