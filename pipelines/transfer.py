"""Moving files between node-local scratch and run storage (any `Location`), verified.

An upload streams the local file, hashing what it sends, then checks the stored object's size
and (by reading it back) its sha256 against what was sent; a download hashes what it receives
and compares it with the digest it was given. A transfer that fails or does not verify is
retried (`attempts`, exponential backoff) and then raises `StorageError` naming the file. Many
files move in parallel on a small thread pool (object stores reward parallel requests).

Nothing here knows about checkpoints: the Checkpointer decides what goes where and records the
digests these functions return (size + sha256) in its commit marker.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from pipelines.errors import StorageError
from pipelines.storage import Location

log = logging.getLogger(__name__)

CHUNK_BYTES = 8 << 20
DEFAULT_ATTEMPTS = 3
DEFAULT_BACKOFF_S = 0.5
DEFAULT_THREADS = 8
T = TypeVar("T")


@dataclass(frozen=True)
class FileDigest:
    """What a commit marker records per file."""

    size: int
    sha256: str

    def to_json(self) -> dict[str, int | str]:
        return {"size": self.size, "sha256": self.sha256}

    @classmethod
    def from_json(cls, data: dict) -> FileDigest:
        return cls(int(data["size"]), str(data["sha256"]))


def file_digest(path: Path) -> FileDigest:
    """Size and sha256 of a local file."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as src:
        while chunk := src.read(CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return FileDigest(size, digest.hexdigest())


def stored_digest(location: Location) -> FileDigest:
    """Size and sha256 of a stored file, read back in full."""
    digest = hashlib.sha256()
    size = 0
    with location.fs.open_input_stream(location.path) as src:
        while chunk := src.read(CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return FileDigest(size, digest.hexdigest())


def upload_file(
    local: Path,
    dest: Location,
    *,
    verify: bool = True,
    attempts: int = DEFAULT_ATTEMPTS,
    backoff_s: float = DEFAULT_BACKOFF_S,
) -> FileDigest:
    """Copy a local file to `dest` atomically; returns the digest of the bytes sent.

    After each upload the stored size must equal the local size and, with `verify`, the stored
    bytes must hash to what was sent; otherwise the attempt counts as failed."""
    local = Path(local)
    if not local.is_file():
        raise StorageError(f"upload {local} -> {dest.uri}: no such local file")

    def once() -> FileDigest:
        digest = hashlib.sha256()
        size = 0
        with open(local, "rb") as src, dest.open_upload() as out:
            while chunk := src.read(CHUNK_BYTES):
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
        sent = FileDigest(size, digest.hexdigest())
        stored = dest.size()
        if stored != sent.size:
            raise _Mismatch(f"stored size {stored} != {sent.size} bytes sent")
        if verify and stored_digest(dest) != sent:
            raise _Mismatch("stored bytes do not hash to the sha256 sent")
        return sent

    return _retry(once, f"upload {local} -> {dest.uri}", attempts, backoff_s)


def download_file(
    src: Location,
    local: Path,
    *,
    expect: FileDigest | None = None,
    attempts: int = DEFAULT_ATTEMPTS,
    backoff_s: float = DEFAULT_BACKOFF_S,
) -> FileDigest:
    """Copy `src` to a local file atomically (a temporary sibling, then a rename); returns its
    digest. With `expect`, a file of another size or sha256 is an error (after retries)."""
    local = Path(local)

    def once() -> FileDigest:
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.part-{uuid.uuid4().hex[:8]}")
        digest = hashlib.sha256()
        size = 0
        try:
            with src.fs.open_input_stream(src.path) as stream, open(tmp, "wb") as out:
                while chunk := stream.read(CHUNK_BYTES):
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
            got = FileDigest(size, digest.hexdigest())
            if expect is not None and got != expect:
                raise _Mismatch(
                    f"got {got.size} bytes sha256 {got.sha256[:12]}..., expected "
                    f"{expect.size} bytes sha256 {expect.sha256[:12]}..."
                )
            os.replace(tmp, local)
            return got
        finally:
            tmp.unlink(missing_ok=True)

    return _retry(once, f"download {src.uri} -> {local}", attempts, backoff_s)


def upload_many(
    pairs: Sequence[tuple[Path, Location]], *, threads: int = DEFAULT_THREADS, **kwargs
) -> list[FileDigest]:
    """`upload_file` for each (local, dest) pair, in parallel; digests in the pairs' order."""
    return _parallel([lambda p=p: upload_file(p[0], p[1], **kwargs) for p in pairs], threads)


def download_many(
    items: Sequence[tuple[Location, Path, FileDigest | None]],
    *,
    threads: int = DEFAULT_THREADS,
    **kwargs,
) -> list[FileDigest]:
    """`download_file` for each (src, local, expected digest or None), in parallel."""
    jobs = [lambda i=i: download_file(i[0], i[1], expect=i[2], **kwargs) for i in items]
    return _parallel(jobs, threads)


def upload_dir(local_dir: Path, dest: Location, **kwargs) -> dict[str, FileDigest]:
    """Every file under `local_dir` to the same relative path under `dest`; returns
    {relative posix path: digest}."""
    local_dir = Path(local_dir)
    files = sorted(p for p in local_dir.rglob("*") if p.is_file())
    names = [p.relative_to(local_dir).as_posix() for p in files]
    digests = upload_many([(p, dest.join(n)) for p, n in zip(files, names, strict=True)], **kwargs)
    return dict(zip(names, digests, strict=True))


def download_dir(
    src: Location, local_dir: Path, files: dict[str, FileDigest | None], **kwargs
) -> dict[str, FileDigest]:
    """The named files (relative posix paths) of `src` into `local_dir`, each verified against
    its digest where one is given; returns {name: digest}."""
    names = sorted(files)
    items = [(src.join(n), Path(local_dir) / n, files[n]) for n in names]
    return dict(zip(names, download_many(items, **kwargs), strict=True))


class _Mismatch(Exception):
    """A transfer completed but does not verify."""


def _retry(once: Callable[[], T], what: str, attempts: int, backoff_s: float) -> T:
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    for attempt in range(1, attempts + 1):
        try:
            return once()
        except (OSError, _Mismatch) as err:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            if isinstance(err, FileNotFoundError) or attempt == attempts:
                raise StorageError(f"{what}: {reason} (attempt {attempt}/{attempts})") from None
            log.warning("%s: %s; retrying (attempt %d/%d)", what, reason, attempt, attempts)
            time.sleep(backoff_s * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


def _parallel(jobs: Sequence[Callable[[], T]], threads: int) -> list[T]:
    """Run every job; the first failure (in job order) is raised once all have ended."""
    if not jobs:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(jobs)))) as pool:
        futures = [pool.submit(job) for job in jobs]
    errors = [f.exception() for f in futures if f.exception() is not None]
    if errors:
        raise errors[0]
    return [f.result() for f in futures]
