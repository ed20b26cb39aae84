"""Reading one input file's bytes, turning a missing or unreadable file into a reject."""

from __future__ import annotations

from pipelines.data.sources.base import Item, Rejected, SampleRef
from pipelines.storage import Location


def read_item(location: Location, ref: SampleRef) -> Item:
    try:
        return location.read_bytes()
    except FileNotFoundError:
        return Rejected(ref.source_id, "file_missing", f"{location.uri} does not exist", ref.key)
    except (PermissionError, IsADirectoryError) as err:
        return Rejected(ref.source_id, "unreadable", f"{location.uri}: {err}", ref.key)
    except OSError as err:
        if "is a directory" in str(err) or "Permission denied" in str(err):
            return Rejected(ref.source_id, "unreadable", f"{location.uri}: {err}", ref.key)
        raise
