"""Local paths and remote URIs behind one small interface (pyarrow.fs, fsspec as fallback).

Writes are atomic: bytes go to a temporary name in the same directory and are then moved into
place, so a crash never leaves a file that looks complete.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs

from pipelines.errors import DataError

ALLOWED_SCHEMES = ("file", "s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss", "az", "memory")


@dataclass(frozen=True)
class Location:
    """A directory or file on some filesystem: `fs` plus a path `fs` understands."""

    fs: pafs.FileSystem
    path: str
    uri: str

    @property
    def is_local(self) -> bool:
        """On this machine's filesystem: `path` is then an ordinary path."""
        return isinstance(self.fs, pafs.LocalFileSystem)

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
