"""`manifest.json`: the one description of a shard set that training reads (it never globs).

Format 1 (what `vitpipe shard` writes): the shards sit next to the manifest. Format 2 (what
indexing users' own WebDataset shards writes, `shard.source.kind: webdataset`): each split names
its `shards_root` (a path, relative to the manifest's folder or absolute, or a URI), shards may
list `skip`, the indices of tar samples that are not part of the set (no image or no label), and
`label_key` says where a sample's label is (`cls`, or `json:<field>`). Both load.

A manifest is data. It is validated strictly (pydantic) before anything is sized from it, with a
one-line `DataError`: unknown fields in shard entries, wrong types, negative or impossible counts
(a sample takes at least one 512-byte tar header, so `samples` can never exceed `bytes // 512`),
duplicate shard names, and names like `pipe:curl ...`, `../../etc` or an absolute path, which
must never turn into a command or a read outside the set.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipelines.errors import DataError
from pipelines.storage import Location, locate

FORMAT_VERSION = 1  # what `vitpipe shard` writes
INDEX_FORMAT_VERSION = 2  # what indexing foreign WebDataset shards writes
MANIFEST_NAME = "manifest.json"
TAR_BLOCK = 512  # every tar member starts with a header block of this size
_SHARD_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*(\.[A-Za-z0-9_\-]+)*\.tar$")


@dataclass(frozen=True)
class ShardInfo:
    name: str
    samples: int
    bytes: int
    sha256: str
    skip: tuple[int, ...] = ()  # tar sample indices that are not in the set (format 2)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "samples": self.samples,
            "bytes": self.bytes,
            "sha256": self.sha256,
        }
        if self.skip:
            out["skip"] = list(self.skip)
        return out


@dataclass(frozen=True)
class SplitInfo:
    shards: tuple[ShardInfo, ...]
    root: str | None = None  # format 2: where the shards are; None: the manifest's folder

    @property
    def num_samples(self) -> int:
        return sum(s.samples for s in self.shards)

    @property
    def num_bytes(self) -> int:
        return sum(s.bytes for s in self.shards)


@dataclass(frozen=True)
class Manifest:
    classes: tuple[str, ...]
    splits: dict[str, SplitInfo]
    source: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    label_key: str = "cls"

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split(self, name: str) -> SplitInfo:
        if name not in self.splits:
            raise DataError(
                f"split {name!r} is not in the manifest; it has: {', '.join(sorted(self.splits))}"
            )
        return self.splits[name]

    def shards_root(self, manifest_dir: Location, split: str) -> Location:
        """Where split `split`'s shard files are: the manifest's folder unless it names one."""
        root = self.split(split).root
        if root is None:
            return manifest_dir
        if "://" in root or root.startswith("/"):
            return locate(root)
        return manifest_dir.join(root)

    def to_json(self) -> dict[str, Any]:
        splits = {}
        for name, info in self.splits.items():
            entry: dict[str, Any] = {}
            if info.root is not None:
                entry["shards_root"] = info.root
            entry["num_samples"] = info.num_samples
            entry["num_bytes"] = info.num_bytes
            entry["shards"] = [s.as_json() for s in info.shards]
            splits[name] = entry
        head: dict[str, Any] = {"format_version": self.format_version, "source": self.source}
        if self.format_version >= INDEX_FORMAT_VERSION:
            head["label_key"] = self.label_key
        return {
            **head,
            "classes": list(self.classes),
            "splits": splits,
            "totals": {
                "num_samples": sum(s.num_samples for s in self.splits.values()),
                "num_shards": sum(len(s.shards) for s in self.splits.values()),
                "num_bytes": sum(s.num_bytes for s in self.splits.values()),
            },
            **self.extra,
        }


def write_manifest(root: Location, manifest: Manifest) -> None:
    data = json.dumps(manifest.to_json(), indent=2, sort_keys=False) + "\n"
    root.join(MANIFEST_NAME).write_bytes_atomic(data.encode())


def read_manifest(root: str | Location) -> Manifest:
    """Read and validate `<root>/manifest.json`; raises `DataError` naming what is wrong."""
    loc = locate(root) if isinstance(root, str) else root
    path = loc.join(MANIFEST_NAME)
    if not path.is_file():
        raise DataError(
            f"{path.uri}: no manifest.json; run `vitpipe shard` to create the shard set"
        )
    try:
        data = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path.uri}: not valid JSON ({err})") from None
    return manifest_from_json(data, where=path.uri)


# -- the schema ------------------------------------------------------------------------------


class _Shard(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: str
    samples: int = Field(ge=0)
    bytes: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    skip: list[int] = []


class _Split(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    shards: list[_Shard]
    shards_root: str | None = Field(None, min_length=1)
    num_samples: int | None = None
    num_bytes: int | None = None


class _Document(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    format_version: Literal[1, 2]
    classes: list[str]
    splits: dict[str, _Split]
    source: dict[str, Any] = {}
    totals: dict[str, Any] | None = None
    label_key: str = Field("cls", pattern=r"^(cls|json:[A-Za-z0-9_][A-Za-z0-9_.\-]*)$")


def _schema_error(where: str, err: ValidationError) -> DataError:
    problems = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        given = repr(e.get("input"))
        given = given if len(given) <= 60 else given[:57] + "..."
        problems.append(f"{loc}: {e['msg']} (got {given})")
    more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
    return DataError(f"{where}: invalid manifest: {problems[0]}{more}")


def manifest_from_json(data: Any, where: str = MANIFEST_NAME) -> Manifest:
    if not isinstance(data, dict):
        raise DataError(f"{where}: expected a JSON object")
    version = data.get("format_version")
    if version not in (FORMAT_VERSION, INDEX_FORMAT_VERSION) or isinstance(version, bool):
        raise DataError(
            f"{where}: format_version {version!r} is not supported; expected "
            f"{FORMAT_VERSION} or {INDEX_FORMAT_VERSION}"
        )
    try:
        doc = _Document.model_validate(data)
    except ValidationError as err:
        raise _schema_error(where, err) from None
    splits = {name: _split_info(name, split, doc, where) for name, split in doc.splits.items()}
    _check_unique_names(splits, where)
    for name, split in doc.splits.items():
        _check_totals(name, split, splits[name], where)
    known = set(_Document.model_fields)
    extra = {k: v for k, v in data.items() if k not in known}
    return Manifest(
        tuple(doc.classes), splits, doc.source, extra, doc.format_version, doc.label_key
    )


def _split_info(name: str, split: _Split, doc: _Document, where: str) -> SplitInfo:
    if doc.format_version == FORMAT_VERSION and (split.shards_root or doc.label_key != "cls"):
        raise DataError(
            f"{where}: split {name!r}: shards_root and label_key need format_version "
            f"{INDEX_FORMAT_VERSION}"
        )
    shards = []
    for entry in split.shards:
        check_shard_name(entry.name, where)
        skip = tuple(entry.skip)
        if doc.format_version == FORMAT_VERSION and skip:
            raise DataError(f"{where}: shard {entry.name!r}: 'skip' needs format_version 2")
        if list(skip) != sorted(set(skip)) or (skip and skip[0] < 0):
            raise DataError(
                f"{where}: shard {entry.name!r}: 'skip' must be increasing indices >= 0"
            )
        runs = entry.samples + len(skip)
        if runs * TAR_BLOCK > entry.bytes:
            raise DataError(
                f"{where}: shard {entry.name!r} claims {runs} samples in {entry.bytes} bytes; "
                f"a tar of that size holds at most {entry.bytes // TAR_BLOCK}"
            )
        shards.append(ShardInfo(entry.name, entry.samples, entry.bytes, entry.sha256, skip))
    return SplitInfo(tuple(shards), split.shards_root)


def _check_totals(name: str, split: _Split, info: SplitInfo, where: str) -> None:
    for stated, actual, what in (
        (split.num_samples, info.num_samples, "num_samples"),
        (split.num_bytes, info.num_bytes, "num_bytes"),
    ):
        if stated is not None and stated != actual:
            raise DataError(
                f"{where}: split {name!r} says {what}={stated}, its shards add up to {actual}"
            )


def _check_unique_names(splits: dict[str, SplitInfo], where: str) -> None:
    """A shard file belongs to one split, once: a repeat would train or validate on it twice."""
    seen: dict[tuple[str | None, str], str] = {}
    for split_name, info in splits.items():
        for shard in info.shards:
            place = (info.root, shard.name)
            if place in seen:
                raise DataError(
                    f"{where}: shard {shard.name!r} is listed twice (splits {seen[place]!r} and "
                    f"{split_name!r}); each shard may appear once"
                )
            seen[place] = split_name


def check_shard_name(name: str, where: str = MANIFEST_NAME) -> None:
    """Shard names are plain file names inside the set: no schemes, pipes, dirs or '..'."""
    if not _SHARD_NAME_RE.match(name) or ".." in name:
        raise DataError(
            f"{where}: shard name {name!r} is not allowed; names must be plain file names "
            "like 'train-000000.tar' inside the dataset directory (no 'pipe:', '/', '..' or scheme)"
        )


def split_counts(manifest: Manifest) -> dict[str, dict[str, int]]:
    """{split: {num_samples, num_shards}}: what a shard stage's summary reports per split."""
    return {
        name: {"num_samples": info.num_samples, "num_shards": len(info.shards)}
        for name, info in manifest.splits.items()
    }
