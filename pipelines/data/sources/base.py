"""What every source offers: a cheap index on the driver, and loading of one item in a task.

A source is built on the driver, indexed there (`index()`: one `SampleRef` per input, plus the
inputs already known to be unusable), then pickled to the Ray tasks, which call `load(refs)` for
their shard's samples only. Keys and source ids depend only on the input's identity (relative
path, file + row, index), never on where the data sits or on the number of workers.
"""

from __future__ import annotations

import abc
import hashlib
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from PIL import Image

# Why an input could not be used: the `reason` column of `rejected.parquet`.
REJECT_REASONS = (
    "undecodable",
    "zero_bytes",
    "truncated",
    "not_an_image",
    "label_missing",
    "label_out_of_range",
    "label_invalid",
    "too_many_pixels",
    "file_missing",
    "unreadable",
    "not_regular_file",  # a FIFO, device, socket or symlinked directory
    "outside_root",  # a symlink that leads out of the source's root
    "too_large",  # over shard.source.max_file_bytes
    "no_image",  # a WebDataset sample without an image member
    "truncated_shard",  # the unreadable tail of a WebDataset shard
)
MAX_KEY_LENGTH = 80  # tar member names (key + extension) must fit USTAR's 100 bytes
_UNSAFE_RE = re.compile(r"[^A-Za-z0-9_\-]")


@dataclass(frozen=True)
class SampleRef:
    """One input: its WebDataset key, integer label, and how its source finds it again.

    `source_id` is what a human recognises (a relative path, `file.parquet#12`); `locator` is
    what `Source.load` needs (picklable); `stamp` is a cheap change marker (size, mtime) that
    only feeds the re-run check and is never written into a shard.
    """

    key: str
    label: int
    source_id: str
    locator: Any = None
    stamp: str = ""


@dataclass(frozen=True)
class Rejected:
    """An input that could not be used, and why (`reason` is one of `REJECT_REASONS`)."""

    source_id: str
    reason: str
    detail: str
    key: str = ""

    def __post_init__(self) -> None:
        assert self.reason in REJECT_REASONS, self.reason


@dataclass(frozen=True)
class SourceIndex:
    classes: tuple[str, ...]
    refs: tuple[SampleRef, ...]
    rejected: tuple[Rejected, ...] = ()


@dataclass(frozen=True)
class Decoded:
    """An image a source made itself (synthetic, or decoded from arrays), already RGB."""

    image: Image.Image
    original_size: tuple[int, int]


# What `load` yields per ref: encoded file bytes, a decoded image, or a reject.
Item = bytes | Decoded | Rejected


class Source(abc.ABC):
    kind: str

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """The source's identity for the manifest and the re-run check (no absolute paths)."""

    @abc.abstractmethod
    def index(self) -> SourceIndex:
        """Every input as a `SampleRef` with a unique key; runs once, on the driver."""

    @abc.abstractmethod
    def load(self, refs: Sequence[SampleRef]) -> Iterator[tuple[SampleRef, Item]]:
        """Each ref's item, in the order given; runs inside a task."""


def short_hash(text: str, length: int = 8) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:length]


def make_key(readable: str, identity: str, force_hash: bool = False) -> str:
    """A key from a readable name: `[A-Za-z0-9_-]` only (no dots: WebDataset splits there).

    `/` becomes `_`; when anything else had to be replaced, the name is too long, or
    `force_hash` is set, a short hash of `identity` keeps the key unique and stable.
    """
    flat = readable.replace("/", "_")
    key = _UNSAFE_RE.sub("_", flat)
    lossy = key != flat or not key
    if lossy or force_hash or len(key) > MAX_KEY_LENGTH:
        key = f"{key[: MAX_KEY_LENGTH - 9]}_{short_hash(identity)}".lstrip("_")
    return key


def unique_keys(refs: list[SampleRef], names: Sequence[tuple[str, str]]) -> list[SampleRef]:
    """Refs whose keys collide get hashed keys: every member of a colliding group, so the
    result does not depend on which came first. `names[i]` is refs[i]'s (readable, identity)."""
    counts = Counter(r.key for r in refs)
    if all(n == 1 for n in counts.values()):
        return refs
    fixed = [
        replace(r, key=make_key(*name, force_hash=True)) if counts[r.key] > 1 else r
        for r, name in zip(refs, names, strict=True)
    ]
    assert len({r.key for r in fixed}) == len(fixed), "key hash collision"
    return fixed


def label_names(num_classes: int) -> tuple[str, ...]:
    return tuple(str(i) for i in range(num_classes))
