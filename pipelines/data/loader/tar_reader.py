"""Stream the samples out of one WebDataset tar shard, never raising on bad data.

A shard is read front to back in tarfile stream mode ('r|') over `Location.open_regular()`, so
the same code serves local files and object stores with sequential reads. Samples are grouped
exactly as the `webdataset` library groups them (pinned sample by sample by
tests/e2e/test_wds_index.py on shards written by `webdataset.ShardWriter`):

- only regular members count; `__*__` metadata members are skipped;
- a member name splits at the first dot of its base name: `dir/n0153.v2.JPG` is key
  `dir/n0153`, extension `v2.jpg` (lower-cased); a name without a dot is skipped;
- a sample is a run of consecutive members with the same key; a repeated extension inside a run
  is dropped (the library raises and, with `ignore_and_continue`, goes on).

`iter_runs` yields every such run (the indexer's view); `read_shard` yields the wanted samples,
where sample i is the i-th run not listed in the manifest's `skip`. Like open_clip's no-throw
reader, any failure (missing file, truncated tar, a member over the size cap) ends the shard and
reports every wanted sample not yet delivered as missing, with the reason.
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

import pyarrow as pa

from pipelines.storage import Location, RefusedFile

# tarfile's stream buffer re-slices what it holds on every read: small is fast (1 MiB is 5x slower).
_READ_BUFFER = tarfile.RECORDSIZE
DEFAULT_MAX_MEMBER_BYTES = 512 * 2**20
# webdataset.tariterators: base_plus_ext and the default skip_meta pattern.
_KEY_RE = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
_META_RE = re.compile(r"__[^/]*__($|/)")
READ_ERRORS = (OSError, EOFError, tarfile.TarError, pa.ArrowException, RefusedFile)


@dataclass
class RawSample:
    """The members of one sample, undecoded: extension -> bytes (e.g. {'cls': b'3', 'png': ...})."""

    key: str
    fields: dict[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class Missing:
    """A wanted sample that could not be read from the tar, and why."""

    reason: str


@dataclass
class TarRun:
    """One sample as the tar holds it: its index among the shard's runs, key and members read
    completely (only those `iter_runs` was asked to extract)."""

    index: int
    sample: RawSample


class MemberTooLarge(tarfile.TarError):
    """A member whose header claims more bytes than the cap: never read, ends the shard."""


def split_member_name(name: str) -> tuple[str | None, str]:
    """'dir/abc.seg.PNG' -> ('dir/abc', 'seg.png'); (None, '') when the name has no dot."""
    match = _KEY_RE.match(name)
    if not match:
        return None, ""
    return match.group(1), match.group(2).lower()


def _is_meta(name: str) -> bool:
    return ("/" not in name and name.startswith("__") and name.endswith("__")) or bool(
        _META_RE.match(name)
    )


def iter_runs(
    fileobj: BinaryIO, max_member_bytes: int, extract: Callable[[int], bool] = lambda run: True
) -> Iterator[TarRun]:
    """Every run of the tar in order. Members of runs for which `extract(run index)` is false are
    passed over unread. On a failure the interrupted run is yielded with the members read
    completely, then the error is raised."""
    run: TarRun | None = None
    with tarfile.open(fileobj=fileobj, mode="r|", bufsize=_READ_BUFFER) as tar:
        try:
            for member in tar:
                tar.members = []  # stream mode would keep every header otherwise
                if not member.isfile() or _is_meta(member.name):
                    continue
                key, ext = split_member_name(member.name)
                if key is None:
                    continue
                if member.size > max_member_bytes:
                    raise MemberTooLarge(
                        f"member {member.name!r} claims {member.size} bytes, over "
                        f"data.max_member_bytes={max_member_bytes}"
                    )
                if run is None or key != run.sample.key:
                    if run is not None:
                        yield run
                    run = TarRun(run.index + 1 if run is not None else 0, RawSample(key))
                if ext in run.sample.fields or not extract(run.index):
                    continue
                data = tar.extractfile(member)
                run.sample.fields[ext] = data.read() if data is not None else b""
        except Exception:  # not GeneratorExit: a consumer that stops early closes us
            if run is not None:
                yield run
            raise
    if run is not None:
        yield run


def read_shard(
    location: Location,
    wanted: Sequence[int],
    within: Location | None = None,
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
    skip: Sequence[int] = (),
) -> Iterator[tuple[int, RawSample | Missing]]:
    """Yield (index in shard, sample or Missing) for every index in `wanted` (sorted), in order.

    Sample i is the i-th run whose index is not in `skip`. Only a regular file is read, and with
    `within`, only one whose resolved path is inside it.
    """
    pending = iter(wanted)
    target = next(pending, None)
    if target is None:
        return
    skipped = frozenset(skip)
    sample_of_run: dict[int, int] = {}
    counter = [-1]

    def sample_index(run: int) -> int | None:
        if run not in sample_of_run:
            sample_of_run.clear()  # runs come in order: keep one
            if run in skipped:
                sample_of_run[run] = -1
            else:
                counter[0] += 1
                sample_of_run[run] = counter[0]
        index = sample_of_run[run]
        return None if index < 0 else index

    def is_target(run: int) -> bool:
        return sample_index(run) == target

    failure = "the tar holds fewer samples than the manifest says"
    try:
        with location.open_regular(within) as raw:
            for run in iter_runs(raw, max_member_bytes, is_target):
                if sample_index(run.index) == target:
                    yield target, run.sample
                    target = next(pending, None)
                    if target is None:
                        return
    except READ_ERRORS as err:
        # FileNotFoundError, truncated data ("unexpected end of data"), bad headers. The run the
        # failure interrupted was yielded above with its complete members; decoding decides.
        failure = f"{type(err).__name__}: {err}"
    while target is not None:
        yield target, Missing(failure)
        target = next(pending, None)
