"""Local paths and remote URIs behind one small interface (pyarrow.fs, fsspec as fallback).

Writes are atomic: bytes go to a temporary name in the same directory and are then moved into
place, so a crash never leaves a file that looks complete.

Reads of data a user pointed us at (source images, shards) go through `open_regular` /
`read_regular`: regular files only (a FIFO would block forever, `/dev/zero` never ends), under a
size cap, and, when a root is given, only where the resolved path stays inside that root (a
symlink out of a shard or image directory is refused). Refusals raise `RefusedFile` with a reason.
"""

from __future__ import annotations

import os
import stat
import uuid
from dataclasses import dataclass
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs

from pipelines.errors import DataError

ALLOWED_SCHEMES = ("file", "s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss", "az", "memory")


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
        uri = "/".join([self.uri.rstrip("/"), *parts])
        return Location(self.fs, path, uri)

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

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

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
        parent, _, name = self.path.rpartition("/")
        if parent:
            self.fs.create_dir(parent, recursive=True)
        tmp = f"{parent}/.{name}.tmp-{uuid.uuid4().hex[:8]}" if parent else f".{name}.tmp"
        with self.fs.open_output_stream(tmp) as out:
            out.write(data)
        self.fs.move(tmp, self.path)

    def delete(self) -> None:
        if self.exists():
            self.fs.delete_file(self.path)


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
