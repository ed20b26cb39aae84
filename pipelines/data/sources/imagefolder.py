"""`root/<class>/<file>`: classes are the sorted subdirectory names, every file below one is an
input (nested folders included). Hidden files and folders (`.DS_Store`, `.ipynb_checkpoints`)
are skipped; files directly in `root` are rejected as `label_missing`. Whether a file is an
image is decided by decoding it, not by its extension.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import PurePosixPath
from typing import Any

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
from pipelines.data.sources.files import read_item
from pipelines.errors import DataError
from pipelines.storage import locate


class ImageFolderSource(Source):
    kind = "imagefolder"

    def __init__(self, path: str):
        self.path = path
        self.root_uri = locate(path).uri  # absolute: tasks may run in another directory

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.path}

    def index(self) -> SourceIndex:
        root = locate(self.root_uri)
        info = root.fs.get_file_info(root.path)
        if info.type != pafs.FileType.Directory:
            raise DataError(f"shard.source.path={self.path!r} is not a directory ({root.uri})")
        entries = root.fs.get_file_info(pafs.FileSelector(root.path, recursive=True))
        prefix = root.path.rstrip("/") + "/"
        files: list[tuple[str, Any]] = []
        classes: list[str] = []
        for entry in entries:
            rel = entry.path[len(prefix) :] if entry.path.startswith(prefix) else entry.path
            if any(part.startswith(".") for part in rel.split("/")):
                continue
            if entry.type == pafs.FileType.Directory and "/" not in rel:
                classes.append(rel)
            elif entry.type == pafs.FileType.File:
                files.append((rel, entry))
        if not classes:
            raise DataError(
                f"shard.source.path={self.path!r} has no class subdirectories; expected "
                "root/<class>/<image>"
            )
        classes.sort()
        label_of = {name: i for i, name in enumerate(classes)}
        refs: list[SampleRef] = []
        names: list[tuple[str, str]] = []
        rejected: list[Rejected] = []
        for rel, entry in sorted(files, key=lambda f: f[0]):
            class_name, sep, _ = rel.partition("/")
            if not sep:
                rejected.append(
                    Rejected(rel, "label_missing", "file is not inside a class directory")
                )
                continue
            readable = str(PurePosixPath(rel).with_suffix(""))
            stamp = f"{entry.size}:{entry.mtime_ns}"
            key = make_key(readable, rel)
            refs.append(SampleRef(key, label_of[class_name], rel, locator=rel, stamp=stamp))
            names.append((readable, rel))
        return SourceIndex(tuple(classes), tuple(unique_keys(refs, names)), tuple(rejected))

    def load(self, refs: Sequence[SampleRef]) -> Iterator[tuple[SampleRef, Item]]:
        root = locate(self.root_uri)
        for ref in refs:
            yield ref, read_item(root.join(ref.locator), ref)
