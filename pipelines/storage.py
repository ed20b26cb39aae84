"""Local paths and remote URIs behind one small interface (pyarrow.fs, fsspec as fallback).

Writes are atomic: bytes go to a temporary name in the same directory and are then moved into
place (on an object store, a server-side copy), so a reader sees the old file or the whole new
one, and a failed write keeps the old one. Large uploads to a fresh name (`open_upload`) skip the
copy on an object store, where an object only appears once its upload completes; what a failed
upload left is removed, and a commit marker, not the file's presence, says it is good.

S3: the endpoint comes from `AWS_ENDPOINT_URL` (pyarrow reads it) or from the URI's query
(`s3://bucket/prefix?endpoint_override=host:port`); credentials only from the process's own
environment or instance role (pyarrow's default AWS credential chain).

Reads of data a user pointed us at (source images, shards) go through `open_regular` /
`read_regular`: regular files only (a FIFO would block forever, `/dev/zero` never ends), under a
size cap, and, when a root is given, only where the resolved path stays inside that root (a
symlink out of a shard or image directory is refused). Refusals raise `RefusedFile` with a reason.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs

from pipelines.errors import DataError

ALLOWED_SCHEMES = ("file", "s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss", "az", "memory")
# Filesystems whose uploads become visible only once complete.
_OBJECT_STORES = ("s3", "gcs")


def is_uri(path: str | os.PathLike) -> bool:
    """True for a remote URI (`s3://...`, `gs://...`); False for a local path or `file://`."""
    scheme = urlparse(str(path)).scheme.lower()
    return "://" in str(path) and scheme not in ("", "file")


@dataclass(frozen=True)
class Entry:
    """One child of a directory: its name (no path), size in bytes (0 for a dir), kind."""

    name: str
    size: int
    is_dir: bool


class RefusedFile(DataError):
    """A path we will not read: `reason` is 'not_regular_file', 'outside_root' or 'too_large'."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Location:
    """A directory or file on some filesystem: `fs` plus a path `fs` understands."""

    fs: pafs.FileSystem
    path: str
    uri: str

    def join(self, *parts: str) -> Location:
        path = "/".join([self.path.rstrip("/"), *parts])
        base, sep, query = self.uri.partition("?")  # s3://b/p?endpoint_override=...
        uri = "/".join([base.rstrip("/"), *parts]) + sep + query
        return Location(self.fs, path, uri)

    @property
    def parent(self) -> Location:
        path = self.path.rstrip("/").rpartition("/")[0]
        base, sep, query = self.uri.partition("?")
        return Location(self.fs, path, base.rstrip("/").rpartition("/")[0] + sep + query)

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rpartition("/")[2]

    @property
    def is_local(self) -> bool:
        """A path on this machine's filesystem (local disk or a mounted shared filesystem)."""
        return isinstance(self.fs, pafs.LocalFileSystem)

    def local_path(self) -> Path:
        """The `Path` of a local location (the fast path: plain file I/O)."""
        if not self.is_local:
            raise ValueError(f"{self.uri} is not on a local filesystem")
        return Path(self.path)

    def exists(self) -> bool:
        return self.fs.get_file_info(self.path).type != pafs.FileType.NotFound

    def is_file(self) -> bool:
        return self.fs.get_file_info(self.path).type == pafs.FileType.File

    def size(self) -> int:
        return self.fs.get_file_info(self.path).size or 0

    def read_bytes(self) -> bytes:
        with self.fs.open_input_stream(self.path) as stream:
            return stream.read()

    def open_read(self):
        return self.fs.open_input_file(self.path)

    def open_regular(self, within: Location | None = None):
        """A binary reader of this path if it is a regular file (inside `within`, resolved).

        Raises FileNotFoundError, or `RefusedFile` for FIFOs, devices, sockets, directories and
        paths whose symlinks lead out of `within`. Never blocks on a FIFO.
        """
        if not self.is_local:
            info = self.fs.get_file_info(self.path)
            if info.type == pafs.FileType.NotFound:
                raise FileNotFoundError(f"{self.uri} does not exist")
            if info.type != pafs.FileType.File:
                raise RefusedFile("not_regular_file", f"{self.uri} is not a regular file")
            return self.fs.open_input_file(self.path)
        if within is not None and not _inside(self.path, within.path):
            raise RefusedFile(
                "outside_root", f"{self.uri} resolves to a path outside {within.uri} (a symlink)"
            )
        # O_NONBLOCK: opening a FIFO with no writer returns at once instead of waiting forever.
        fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        try:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                kind = _file_kind(mode)
                raise RefusedFile("not_regular_file", f"{self.uri} is a {kind}, not a regular file")
            return os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise

    def read_regular(self, max_bytes: int, within: Location | None = None) -> bytes:
        """The whole file, if `open_regular` accepts it and it holds at most `max_bytes`."""
        with self.open_regular(within) as handle:
            size = os.fstat(handle.fileno()).st_size if self.is_local else handle.size()
            if size > max_bytes:
                raise RefusedFile("too_large", f"{self.uri} holds {size} bytes, over {max_bytes}")
            data = handle.read(max_bytes + 1)  # the file may have grown since
        if len(data) > max_bytes:
            raise RefusedFile("too_large", f"{self.uri} holds over {max_bytes} bytes")
        return data

    def makedirs(self) -> None:
        self.fs.create_dir(self.path, recursive=True)

    def write_bytes_atomic(self, data: bytes) -> None:
        with self.open_write_atomic() as out:
            out.write(data)

    def open_write_atomic(self) -> _AtomicWriter:
        """A stream whose bytes replace this file only once it closes without error."""
        return _AtomicWriter(self, in_place=False)

    def open_upload(self) -> _AtomicWriter:
        """A stream for a large file under a fresh name: like `open_write_atomic`, but written
        in place on an object store (no copy: S3 copies one object of at most 5 GB)."""
        return _AtomicWriter(self, in_place=self.fs.type_name in _OBJECT_STORES)

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def write_text_atomic(self, text: str) -> None:
        self.write_bytes_atomic(text.encode())

    def read_json(self) -> Any:
        return json.loads(self.read_bytes())

    def write_json_atomic(self, value: Any) -> None:
        self.write_bytes_atomic(json.dumps(value, indent=1, sort_keys=True).encode())

    def list_dir(self) -> list[Entry]:
        """The direct children of this directory, sorted by name; [] if it does not exist."""
        selector = pafs.FileSelector(self.path, allow_not_found=True, recursive=False)
        entries = [
            Entry(
                info.base_name,
                info.size or 0 if info.type == pafs.FileType.File else 0,
                info.type == pafs.FileType.Directory,
            )
            for info in self.fs.get_file_info(selector)
        ]
        return sorted(entries, key=lambda e: e.name)

    def delete(self) -> None:
        if self.exists():
            self.fs.delete_file(self.path)

    def delete_tree(self) -> None:
        """This directory and everything under it; nothing happens if it does not exist."""
        if self.fs.get_file_info(self.path).type == pafs.FileType.Directory:
            self.fs.delete_dir(self.path)


class _AtomicWriter:
    """Context manager: an output stream to a temporary sibling, moved into place on success;
    `in_place`: to the name itself, removed again on failure."""

    def __init__(self, target: Location, in_place: bool):
        self._target = target
        parent, _, name = target.path.rpartition("/")
        self._parent = parent
        if in_place:
            self._tmp = None
        else:
            self._tmp = f"{parent}/{temp_name(name)}" if parent else temp_name(name)
        self._stream = None

    def __enter__(self):
        fs = self._target.fs
        if self._parent:
            fs.create_dir(self._parent, recursive=True)
        self._stream = fs.open_output_stream(self._tmp or self._target.path)
        return self._stream

    def __exit__(self, kind, err, tb) -> None:
        fs = self._target.fs
        if self._tmp is None:
            if err is None:
                self._stream.close()
                return
            # pyarrow cannot abort an upload: closing completes it, so remove what it left.
            # (A small write is one PUT at close and never gets here half done.)
            with contextlib.suppress(OSError):
                self._stream.close()
            with contextlib.suppress(OSError):
                self._target.delete()
            return
        self._stream.close()
        if err is None:
            fs.move(self._tmp, self._target.path)
        elif fs.get_file_info(self._tmp).type != pafs.FileType.NotFound:
            fs.delete_file(self._tmp)


def _inside(path: str, root: str) -> bool:
    real, base = os.path.realpath(path), os.path.realpath(root)
    return real == base or real.startswith(base.rstrip(os.sep) + os.sep)


def _file_kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "directory"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISSOCK, "socket"),
    ):
        if test(mode):
            return name
    return "special file"


def temp_name(name: str) -> str:
    """The hidden sibling name a file is written under before it is moved into place: unique
    per writer, so two writers never share one, and skipped by every listing of ours."""
    return f".{name}.tmp-{uuid.uuid4().hex[:8]}"


def temp_sibling(path: Path) -> Path:
    return path.with_name(temp_name(path.name))


def as_location(path: str | os.PathLike | Location) -> Location:
    """A `Location` for what callers may hold: a Location already, a local path or a URI."""
    return path if isinstance(path, Location) else locate(os.fspath(path))


def locate(uri: str) -> Location:
    """A `Location` for a local path, a `file://` URI or any pyarrow.fs / fsspec URI."""
    parsed = urlparse(uri)
    scheme = parsed.scheme.lower()
    if not scheme or (len(scheme) == 1 and os.name == "nt"):
        path = os.path.abspath(os.path.expanduser(uri))
        return Location(pafs.LocalFileSystem(), path, path)
    if scheme not in ALLOWED_SCHEMES:
        raise DataError(
            f"{uri!r}: scheme {scheme!r} is not allowed; use a local path or one of "
            f"{', '.join(s + '://' for s in ALLOWED_SCHEMES)}"
        )
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError):
        fs, path = _fsspec_filesystem(uri)
    return Location(fs, path, uri)


def _fsspec_filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    try:
        import fsspec
    except ImportError:
        raise DataError(
            f"{uri!r}: pyarrow cannot open this URI and fsspec is not installed"
        ) from None
    try:
        fs, path = fsspec.core.url_to_fs(uri)
    except (ImportError, ValueError) as err:
        raise DataError(f"{uri!r}: cannot open this URI: {err}") from None
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path
