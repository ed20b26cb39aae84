"""Reading one input file's bytes, turning a missing, special, oversized or unreadable file into a
reject: regular files only, at most `max_bytes`, and inside `within` when given (never blocks on
a FIFO, never reads a device)."""

from __future__ import annotations

from typing import Any

from pipelines.data.sources.base import Item, Rejected, SampleRef, Source
from pipelines.storage import Location, RefusedFile, locate


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
