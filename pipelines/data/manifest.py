"""`manifest.json`: the one description of a shard set that training reads (it never globs).

Shard names are checked on read: a manifest is data, and a name like `pipe:curl ...`,
`../../etc` or an absolute path must never turn into a command or a read outside the set.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from pipelines.errors import DataError
from pipelines.storage import Location, locate

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
_SHARD_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*(\.[A-Za-z0-9_\-]+)*\.tar$")


@dataclass(frozen=True)
class ShardInfo:
    name: str
    samples: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class SplitInfo:
    shards: tuple[ShardInfo, ...]

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

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split(self, name: str) -> SplitInfo:
        if name not in self.splits:
            raise DataError(
                f"split {name!r} is not in the manifest; it has: {', '.join(sorted(self.splits))}"
            )
        return self.splits[name]

    def to_json(self) -> dict[str, Any]:
        splits = {
            name: {
                "num_samples": info.num_samples,
                "num_bytes": info.num_bytes,
                "shards": [asdict(s) for s in info.shards],
            }
            for name, info in self.splits.items()
        }
        return {
            "format_version": self.format_version,
            "source": self.source,
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


def manifest_from_json(data: dict[str, Any], where: str = MANIFEST_NAME) -> Manifest:
    if not isinstance(data, dict):
        raise DataError(f"{where}: expected a JSON object")
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise DataError(
            f"{where}: format_version {version!r} is not supported; expected {FORMAT_VERSION}"
        )
    classes = data.get("classes")
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise DataError(f"{where}: 'classes' must be a list of class names")
    splits: dict[str, SplitInfo] = {}
    for split_name, split in (data.get("splits") or {}).items():
        shards = []
        for entry in split.get("shards", []):
            try:
                info = ShardInfo(
                    name=str(entry["name"]),
                    samples=int(entry["samples"]),
                    bytes=int(entry["bytes"]),
                    sha256=str(entry["sha256"]),
                )
            except (KeyError, TypeError, ValueError):
                raise DataError(
                    f"{where}: split {split_name!r} has a malformed shard entry {entry!r}"
                ) from None
            check_shard_name(info.name, where)
            if info.samples < 0:
                raise DataError(f"{where}: shard {info.name!r} has a negative sample count")
            shards.append(info)
        splits[str(split_name)] = SplitInfo(tuple(shards))
    known = {"format_version", "source", "classes", "splits", "totals"}
    extra = {k: v for k, v in data.items() if k not in known}
    return Manifest(tuple(classes), splits, data.get("source") or {}, extra, version)


def check_shard_name(name: str, where: str = MANIFEST_NAME) -> None:
    """Shard names are plain file names inside the set: no schemes, pipes, dirs or '..'."""
    if not _SHARD_NAME_RE.match(name) or ".." in name:
        raise DataError(
            f"{where}: shard name {name!r} is not allowed; names must be plain file names "
            "like 'train-000000.tar' inside the dataset directory (no 'pipe:', '/', '..' or scheme)"
        )
