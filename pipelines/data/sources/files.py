"""Reading one input file's bytes, turning a missing, special, oversized or unreadable file into a
reject: regular files only, at most `max_bytes`, and inside `within` when given (never blocks on
a FIFO, never reads a device)."""

from __future__ import annotations

from pipelines.data.sources.base import Item, Rejected, SampleRef
from pipelines.storage import Location, RefusedFile


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
