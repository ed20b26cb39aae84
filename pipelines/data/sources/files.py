"""What the sources that read the user's files share: their config fields (`FileSection`,
`TableSection`), and reading one input file's bytes, turning a missing, special, oversized or
unreadable file into a reject: regular files only, at most `max_bytes`, and inside `within` when
given (never blocks on a FIFO, never reads a device)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from pipelines.data.sources.base import Item, Rejected, SampleRef, Source
from pipelines.section import Section
from pipelines.storage import Location, RefusedFile, locate

DEFAULT_MAX_FILE_BYTES = 512 * 2**20


class FileSection(Section):
    """A source that reads files the user points at; `path` is made absolute before a job
    starts (`pipelines.config.paths`)."""

    kind: str  # each source's section narrows it to its own kind (declared here: it dumps first)
    path: str = Field(min_length=1, description="the folder or file to read")
    max_file_bytes: int = Field(
        DEFAULT_MAX_FILE_BYTES, ge=1, description="larger input files are rejected as too_large"
    )


class TableSection(FileSection):
    """A table of rows (CSV, Parquet): which columns say what."""

    label_column: str = "label"
    path_column: str = Field("path", description="a column of image paths")


class TableSource(Source):
    """A source that is a table of rows in a file or folder the user points at (CSV, Parquet):
    where it is, the cap on each input file, and which columns say what. `described_columns`
    are the ones that change what is sharded (they go into the shard plan's description)."""

    described_columns: tuple[str, ...] = ()

    def __init__(self, path: str, max_file_bytes: int, **columns: str):
        self.path = path
        self.uri = locate(path).uri
        self.max_file_bytes = max_file_bytes
        for name, column in columns.items():
            setattr(self, name, column)

    def describe(self) -> dict[str, Any]:
        described = {name: getattr(self, name) for name in self.described_columns}
        return {"kind": self.kind, "path": self.path, **described}


def read_item(
    location: Location, ref: SampleRef, max_bytes: int, within: Location | None = None
) -> Item:
    try:
        return location.read_regular(max_bytes, within)
    except RefusedFile as err:
        return Rejected(ref.source_id, err.reason, str(err), ref.key)
    except FileNotFoundError:
        return Rejected(ref.source_id, "file_missing", f"{location.uri} does not exist", ref.key)
    except (PermissionError, IsADirectoryError) as err:
        return Rejected(ref.source_id, "unreadable", f"{location.uri}: {err}", ref.key)
    except OSError as err:
        if "is a directory" in str(err) or "Permission denied" in str(err):
            return Rejected(ref.source_id, "unreadable", f"{location.uri}: {err}", ref.key)
        raise
