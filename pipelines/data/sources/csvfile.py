"""A CSV listing `path,label` (column names configurable). Relative paths are relative to the
CSV's folder; absolute paths and URIs are used as they are. Only regular files up to
`shard.source.max_file_bytes` are read (a FIFO or `/dev/zero` is a reject, not a hang).

Labels: when every non-empty label is an integer they are class indices and the classes are
`str(i)` for 0..max; otherwise every label is a class name and the classes are the sorted names.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence
from pathlib import PurePosixPath
from typing import Literal

from pipelines.data.sources.base import (
    Item,
    Rejected,
    SampleRef,
    SourceIndex,
    label_names,
    make_key,
    unique_keys,
)
from pipelines.data.sources.files import (
    DEFAULT_MAX_FILE_BYTES,
    TableSection,
    TableSource,
    read_item,
)
from pipelines.errors import DataError
from pipelines.storage import locate


class CsvSection(TableSection):
    kind: Literal["csv"]

    def build(self) -> CsvSource:
        return CsvSource(self.path, self.path_column, self.label_column, self.max_file_bytes)


class CsvSource(TableSource):
    kind = "csv"
    described_columns = ("path_column", "label_column")

    def __init__(
        self,
        path: str,
        path_column: str,
        label_column: str,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    ):
        super().__init__(path, max_file_bytes, path_column=path_column, label_column=label_column)

    def _rows(self) -> list[tuple[str, str]]:
        loc = locate(self.uri)
        if not loc.is_file():
            raise DataError(f"shard.source.path={self.path!r} is not a file")
        try:
            text = loc.read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError as err:
            raise DataError(f"{self.path}: not UTF-8 text ({err})") from None
        reader = csv.DictReader(io.StringIO(text, newline=""))
        columns = reader.fieldnames or []
        for column, field in (
            (self.path_column, "path_column"),
            (self.label_column, "label_column"),
        ):
            if column not in columns:
                raise DataError(
                    f"{self.path}: no column {column!r} (shard.source.{field}); "
                    f"columns: {', '.join(columns)}"
                )
        return [
            ((row[self.path_column] or "").strip(), (row[self.label_column] or "").strip())
            for row in reader
        ]

    def index(self) -> SourceIndex:
        rows = self._rows()
        labels = [label for _, label in rows if label]
        as_ints = all(_is_int(label) for label in labels)
        if as_ints:
            classes = label_names(max((int(x) for x in labels), default=-1) + 1)
        else:
            classes = tuple(sorted(set(labels)))
        label_of = {name: i for i, name in enumerate(classes)}
        refs: list[SampleRef] = []
        names: list[tuple[str, str]] = []
        rejected: list[Rejected] = []
        for number, (path, label) in enumerate(rows, start=2):  # line 1 is the header
            source_id = path or f"{PurePosixPath(self.path).name}:{number}"
            readable = str(PurePosixPath(path).with_suffix("")) if path else f"row_{number}"
            identity = f"{number}:{path}"
            key = make_key(readable, identity)
            if not path:
                rejected.append(Rejected(source_id, "file_missing", f"line {number}: no path", key))
                continue
            if not label:
                rejected.append(Rejected(source_id, "label_missing", f"line {number}", key))
                continue
            index = int(label) if as_ints else label_of[label]
            if not 0 <= index < len(classes):
                detail = f"line {number}: label {label!r} is negative"
                rejected.append(Rejected(source_id, "label_out_of_range", detail, key))
                continue
            refs.append(SampleRef(key, index, source_id, locator=path))
            names.append((readable, identity))
        return SourceIndex(classes, tuple(unique_keys(refs, names)), tuple(rejected))

    def load(self, refs: Sequence[SampleRef]) -> Iterator[tuple[SampleRef, Item]]:
        base = self.uri.rsplit("/", 1)[0]
        for ref in refs:
            path = ref.locator
            absolute = "://" in path or path.startswith("/")
            target = locate(path if absolute else f"{base}/{path}")
            yield ref, read_item(target, ref, self.max_file_bytes)


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True
