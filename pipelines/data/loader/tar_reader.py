"""Stream the wanted samples out of one WebDataset tar shard, never raising on bad data.

A shard is read front to back in tarfile stream mode ('r|') over `Location.open_read()`, so the
same code serves local files and object stores with sequential reads. Samples are the runs of
consecutive members that share a key (`<key>.<ext>`); sample i is the i-th run. Unwanted samples
are skipped without reading their payload. Like open_clip's no-throw tar reader, any failure
(missing file, truncated tar, unreadable member) ends the shard and reports every wanted sample
not yet delivered as missing, with the reason; the caller decides how to count and replace them.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import pyarrow as pa

from pipelines.storage import Location, RefusedFile

# tarfile's stream buffer re-slices what it holds on every read: small is fast (1 MiB is 5x slower).
_READ_BUFFER = tarfile.RECORDSIZE
DEFAULT_MAX_MEMBER_BYTES = 512 * 2**20


@dataclass
class RawSample:
    """The members of one sample, undecoded: extension -> bytes (e.g. {'cls': b'3', 'png': ...})."""

    key: str
    fields: dict[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class Missing:
    """A wanted sample that could not be read from the tar, and why."""

    reason: str


def split_member_name(name: str) -> tuple[str, str]:
    """'dir/abc.cls' -> ('abc', 'cls'): the key is the base name up to its first dot."""
    base = name.rsplit("/", 1)[-1]
    key, _, ext = base.partition(".")
    return key, ext.lower()


class MemberTooLarge(tarfile.TarError):
    """A member whose header claims more bytes than the cap: never read, ends the shard."""


def read_shard(
    location: Location,
    wanted: Sequence[int],
    within: Location | None = None,
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
) -> Iterator[tuple[int, RawSample | Missing]]:
    """Yield (index in shard, sample or Missing) for every index in `wanted` (sorted), in order.

    Only a regular file is read, and with `within`, only one whose resolved path is inside it.
    A member claiming more than `max_member_bytes` ends the shard like a corrupt header.
    """
    pending = iter(wanted)
    target = next(pending, None)
    if target is None:
        return
    failure = "the tar holds fewer samples than the manifest says"
    index, sample = -1, None
    try:
        with (
            location.open_regular(within) as raw,
            tarfile.open(fileobj=raw, mode="r|", bufsize=_READ_BUFFER) as tar,
        ):
            key = None
            for member in tar:
                if not member.isfile():
                    continue
                if member.size > max_member_bytes:
                    raise MemberTooLarge(
                        f"member {member.name!r} claims {member.size} bytes, over "
                        f"data.max_member_bytes={max_member_bytes}"
                    )
                mkey, ext = split_member_name(member.name)
                if mkey != key:
                    if sample is not None:
                        done, sample = sample, None
                        yield index, done
                        target = next(pending, None)
                        if target is None:
                            return
                    index, key = index + 1, mkey
                    sample = RawSample(mkey) if index == target else None
                if sample is not None:
                    data = tar.extractfile(member)
                    sample.fields[ext] = data.read() if data is not None else b""
    except (OSError, EOFError, tarfile.TarError, pa.ArrowException, RefusedFile) as err:
        # FileNotFoundError, truncated data ("unexpected end of data"), bad headers.
        failure = f"{type(err).__name__}: {err}"
    if sample is not None:
        # The last sample, or the one a failure interrupted: it holds the members that were
        # read completely, and decoding decides whether that is enough.
        yield index, sample
        target = next(pending, None)
    while target is not None:
        yield target, Missing(failure)
        target = next(pending, None)
