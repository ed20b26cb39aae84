"""Parquet as Hugging Face `datasets` exports it: an `image` struct column {bytes, path} and an
int `label` column (both names configurable). A plain binary image column, or a string column of
paths, works too. Class names come from the ClassLabel feature in the schema's `huggingface`
metadata when present, else `str(i)` for 0..max label. A label of -1 (what `datasets` writes for
"no label") or null is `label_missing`.

The driver reads only the label column; each task reads only the image column of the row groups
its rows are in, in small batches, and keeps only its rows. (A shuffled shard touches most row
groups, so each task scans the image column; memory stays bounded by one batch plus its shard.)
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import PurePosixPath
from typing import Any, Literal

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pydantic import Field

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
from pipelines.storage import Location, locate

_READ_BATCH_ROWS = 256
# (file name, file, row in file, row group, row in group, label)
_Row = tuple[str, Location, int, int, int, Any]


class ParquetSection(TableSection):
    kind: Literal["parquet"]
    image_column: str = Field("image", description="image bytes, or a {bytes, path} struct")

    def build(self) -> ParquetSource:
        return ParquetSource(
            self.path, self.image_column, self.label_column, self.path_column, self.max_file_bytes
        )


class ParquetSource(TableSource):
    kind = "parquet"

    described_columns = ("image_column", "label_column")

    def __init__(
        self,
        path: str,
        image_column: str,
        label_column: str,
        path_column: str,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    ):
        super().__init__(
            path,
            max_file_bytes,
            image_column=image_column,
            label_column=label_column,
            path_column=path_column,
        )

    def _files(self) -> list[tuple[str, Location]]:
        """(name relative to `path`, location) of every Parquet file, sorted."""
        root = locate(self.uri)
        info = root.fs.get_file_info(root.path)
        if info.type == pafs.FileType.File:
            return [(PurePosixPath(root.path).name, root)]
        if info.type != pafs.FileType.Directory:
            raise DataError(f"shard.source.path={self.path!r} does not exist")
        prefix = root.path.rstrip("/") + "/"
        entries = root.fs.get_file_info(pafs.FileSelector(root.path, recursive=True))
        names = sorted(
            e.path[len(prefix) :]
            for e in entries
            if e.type == pafs.FileType.File and e.path.endswith(".parquet")
        )
        if not names:
            raise DataError(f"shard.source.path={self.path!r} holds no .parquet files")
        return [(name, root.join(name)) for name in names]

    def _image_column(self, schema: pa.Schema, where: str) -> str:
        for name in (self.image_column, self.path_column):
            if name in schema.names:
                return name
        raise DataError(
            f"{where}: no column {self.image_column!r} (shard.source.image_column) or "
            f"{self.path_column!r} (shard.source.path_column); columns: {', '.join(schema.names)}"
        )

    def index(self) -> SourceIndex:
        files = self._files()
        rows: list[_Row] = []
        names: tuple[str, ...] | None = None
        for name, loc in files:
            with loc.open_read() as handle:
                pf = pq.ParquetFile(handle)
                schema = pf.schema_arrow
                if self.label_column not in schema.names:
                    raise DataError(
                        f"{loc.uri}: no label column {self.label_column!r} "
                        f"(shard.source.label_column); columns: {', '.join(schema.names)}"
                    )
                self._image_column(schema, loc.uri)
                names = names or _class_label_names(schema, self.label_column)
                groups = [
                    (rg, j)
                    for rg in range(pf.num_row_groups)
                    for j in range(pf.metadata.row_group(rg).num_rows)
                ]
                labels: list[Any] = []
                for batch in pf.iter_batches(batch_size=65_536, columns=[self.label_column]):
                    labels.extend(batch.column(0).to_pylist())
            for row, ((rg, in_rg), label) in enumerate(zip(groups, labels, strict=True)):
                rows.append((name, loc, row, rg, in_rg, label))
        return self._make_index(rows, names)

    def _make_index(self, rows: list[_Row], names: tuple[str, ...] | None) -> SourceIndex:
        string_labels = any(isinstance(r[5], str) for r in rows)
        if string_labels and names is None:
            names = tuple(sorted({r[5] for r in rows if isinstance(r[5], str) and r[5]}))
        if names is None:
            valid = [r[5] for r in rows if isinstance(r[5], int) and r[5] >= 0]
            names = label_names(max(valid) + 1 if valid else 0)
        label_of = {n: i for i, n in enumerate(names)}
        refs: list[SampleRef] = []
        keys: list[tuple[str, str]] = []
        rejected: list[Rejected] = []
        for file_name, loc, row, rg, in_rg, label in rows:
            source_id = f"{file_name}#{row}"
            readable = f"{PurePosixPath(file_name).with_suffix('')}_{row:08d}"
            key = make_key(readable, source_id)
            if isinstance(label, str):
                label = label_of.get(label, label) if label else None
            if label is None or label == -1:
                rejected.append(Rejected(source_id, "label_missing", "label is empty", key))
                continue
            if not isinstance(label, int) or not 0 <= label < len(names):
                detail = f"label {label!r} is not in 0..{len(names) - 1}"
                rejected.append(Rejected(source_id, "label_out_of_range", detail, key))
                continue
            refs.append(SampleRef(key, label, source_id, locator=(loc.uri, rg, in_rg)))
            keys.append((readable, source_id))
        return SourceIndex(names, tuple(unique_keys(refs, keys)), tuple(rejected))

    def load(self, refs: Sequence[SampleRef]) -> Iterator[tuple[SampleRef, Item]]:
        wanted: dict[str, dict[int, set[int]]] = defaultdict(lambda: defaultdict(set))
        for ref in refs:
            uri, rg, in_rg = ref.locator
            wanted[uri][rg].add(in_rg)
        values: dict[tuple[str, int, int], Any] = {}
        for uri, groups in wanted.items():
            loc = locate(uri)
            with loc.open_read() as handle:
                pf = pq.ParquetFile(handle)
                column = self._image_column(pf.schema_arrow, uri)
                for rg in sorted(groups):
                    offset = 0
                    batches = pf.iter_batches(
                        batch_size=_READ_BATCH_ROWS, row_groups=[rg], columns=[column]
                    )
                    for batch in batches:
                        for j in sorted(r for r in groups[rg] if offset <= r < offset + len(batch)):
                            values[(uri, rg, j)] = batch.column(0)[j - offset].as_py()
                        offset += len(batch)
        for ref in refs:
            yield ref, self._item(ref, values[ref.locator])

    def _item(self, ref: SampleRef, value: Any) -> Item:
        if isinstance(value, dict):
            data, path = value.get("bytes"), value.get("path")
        elif isinstance(value, bytes | bytearray):
            data, path = value, None
        else:
            data, path = None, value
        if data is not None:
            if len(data) > self.max_file_bytes:
                detail = f"{len(data)} image bytes, over shard.source.max_file_bytes"
                return Rejected(ref.source_id, "too_large", detail, ref.key)
            return bytes(data)
        if not path:
            return Rejected(
                ref.source_id, "zero_bytes", "image has neither bytes nor path", ref.key
            )
        if "://" in path or path.startswith("/"):
            return read_item(locate(path), ref, self.max_file_bytes)
        parent = locate(ref.locator[0]).uri.rsplit("/", 1)[0]
        return read_item(locate(f"{parent}/{path}"), ref, self.max_file_bytes)


def _class_label_names(schema: pa.Schema, label_column: str) -> tuple[str, ...] | None:
    """ClassLabel names from the `huggingface` schema metadata that `datasets` writes."""
    raw = (schema.metadata or {}).get(b"huggingface")
    if not raw:
        return None
    try:
        features = json.loads(raw)["info"]["features"]
        names = features[label_column]["names"]
    except (ValueError, KeyError, TypeError):
        return None
    if isinstance(names, list) and all(isinstance(n, str) for n in names):
        return tuple(names)
    return None
