"""`root/<class>/<file>`: classes are the sorted subdirectory names, every file below one is an
input (nested folders included). Hidden files and folders (`.DS_Store`, `.ipynb_checkpoints`)
are skipped; files directly in `root` are rejected as `label_missing`. Whether a file is an
image is decided by decoding it, not by its extension.

Only regular files inside `root` are read. On a local disk, symlinked directories are never
followed (`a/loop -> ..` would multiply samples under wrong labels), a symlinked file is used only
when it resolves inside `root`, and FIFOs, devices and sockets are refused; files over
`shard.source.max_file_bytes` are refused too. Each refusal is a reject with its reason.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Sequence
from pathlib import PurePosixPath
from typing import Any, Literal

import pyarrow.fs as pafs

from pipelines.data.sources.base import (
    Item,
    Rejected,
    SampleRef,
    Source,
    SourceIndex,
    make_key,
    unique_keys,
)
from pipelines.data.sources.files import DEFAULT_MAX_FILE_BYTES, FileSection, read_item
from pipelines.errors import DataError
from pipelines.storage import Location, locate


class ImageFolderSection(FileSection):
    kind: Literal["imagefolder"]

    def build(self) -> ImageFolderSource:
        return ImageFolderSource(self.path, self.max_file_bytes)


class ImageFolderSource(Source):
    kind = "imagefolder"

    def __init__(self, path: str, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES):
        self.path = path
        self.max_file_bytes = max_file_bytes
        self.root_uri = locate(path).uri  # absolute: tasks may run in another directory

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.path}

    def index(self) -> SourceIndex:
        root = locate(self.root_uri)
        info = root.fs.get_file_info(root.path)
        if info.type != pafs.FileType.Directory:
            raise DataError(f"shard.source.path={self.path!r} is not a directory ({root.uri})")
        if root.is_local:
            classes, files, rejected = _walk_local(root.path)
        else:
            classes, files, rejected = _walk_remote(root)
        if not classes:
            raise DataError(
                f"shard.source.path={self.path!r} has no class subdirectories; expected "
                "root/<class>/<image>"
            )
        classes.sort()
        label_of = {name: i for i, name in enumerate(classes)}
        refs: list[SampleRef] = []
        names: list[tuple[str, str]] = []
        for rel, (size, mtime_ns) in sorted(files, key=lambda f: f[0]):
            class_name, sep, _ = rel.partition("/")
            if not sep:
                rejected.append(
                    Rejected(rel, "label_missing", "file is not inside a class directory")
                )
                continue
            readable = str(PurePosixPath(rel).with_suffix(""))
            if size > self.max_file_bytes:
                detail = f"{size} bytes, over shard.source.max_file_bytes={self.max_file_bytes}"
                rejected.append(Rejected(rel, "too_large", detail, make_key(readable, rel)))
                continue
            stamp = f"{size}:{mtime_ns}"
            key = make_key(readable, rel)
            refs.append(SampleRef(key, label_of[class_name], rel, locator=rel, stamp=stamp))
            names.append((readable, rel))
        return SourceIndex(tuple(classes), tuple(unique_keys(refs, names)), tuple(rejected))

    def load(self, refs: Sequence[SampleRef]) -> Iterator[tuple[SampleRef, Item]]:
        root = locate(self.root_uri)
        for ref in refs:
            yield ref, read_item(root.join(ref.locator), ref, self.max_file_bytes, within=root)


_Files = list[tuple[str, tuple[int, int]]]  # (relative path, (size, mtime_ns))


def _walk_local(root: str) -> tuple[list[str], _Files, list[Rejected]]:
    """(class dirs, regular files, refusals) below `root`, never following a directory link."""
    classes: list[str] = []
    files: _Files = []
    rejected: list[Rejected] = []
    real_root = os.path.realpath(root).rstrip(os.sep)
    stack = [""]
    while stack:
        folder = stack.pop()
        with os.scandir(os.path.join(root, folder)) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                rel = f"{folder}/{entry.name}" if folder else entry.name
                if entry.is_dir(follow_symlinks=False):
                    stack.append(rel)
                    if not folder:
                        classes.append(rel)
                    continue
                if entry.is_symlink():
                    target = os.path.realpath(entry.path)
                    inside = target == real_root or target.startswith(real_root + os.sep)
                    if not inside:
                        rejected.append(Rejected(rel, "outside_root", f"a symlink to {target}"))
                        continue
                    try:
                        info = os.stat(target)
                    except OSError as err:
                        rejected.append(Rejected(rel, "file_missing", f"broken symlink: {err}"))
                        continue
                else:
                    info = entry.stat(follow_symlinks=False)
                if stat.S_ISREG(info.st_mode):
                    files.append((rel, (info.st_size, info.st_mtime_ns)))
                else:
                    kind = (
                        "symlinked directory, not followed"
                        if stat.S_ISDIR(info.st_mode)
                        else ("not a regular file (a FIFO, device or socket)")
                    )
                    rejected.append(Rejected(rel, "not_regular_file", kind))
    return classes, files, rejected


def _walk_remote(root: Location) -> tuple[list[str], _Files, list[Rejected]]:
    """The same listing from an object store (no links there)."""
    entries = root.fs.get_file_info(pafs.FileSelector(root.path, recursive=True))
    prefix = root.path.rstrip("/") + "/"
    classes: list[str] = []
    files: _Files = []
    for entry in entries:
        rel = entry.path[len(prefix) :] if entry.path.startswith(prefix) else entry.path
        if any(part.startswith(".") for part in rel.split("/")):
            continue
        if entry.type == pafs.FileType.Directory and "/" not in rel:
            classes.append(rel)
        elif entry.type == pafs.FileType.File:
            files.append((rel, (entry.size or 0, entry.mtime_ns or 0)))
    return classes, files, []
