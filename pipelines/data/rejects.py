"""`rejected.parquet`: every input that could not be used, with its reason and details. Names
come from users' files and may be any bytes: they are written escaped, never refused."""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.data.sources.base import Rejected
from pipelines.storage import Location

REJECTED_NAME = "rejected.parquet"
SCHEMA = pa.schema(
    [
        ("source_id", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("key", pa.string()),
    ]
)


def rejects_table(rejected: Iterable[Rejected]) -> pa.Table:
    rows = sorted(rejected, key=lambda r: (r.source_id, r.reason, r.key))
    return pa.table(
        {
            "source_id": [utf8(r.source_id) for r in rows],
            "reason": [r.reason for r in rows],
            "detail": [utf8(r.detail) for r in rows],
            "key": [utf8(r.key) for r in rows],
        },
        schema=SCHEMA,
    )


def utf8(text: str) -> str:
    """`text` as valid UTF-8, so that no name a user's file holds can fail the table: bytes
    that were not UTF-8 (which tarfile and os hand on as surrogates) read as `\\xNN`."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that stands for no byte
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def rejects_bytes(rejected: Iterable[Rejected]) -> bytes:
    out = io.BytesIO()
    pq.write_table(rejects_table(rejected), out)
    return out.getvalue()


def write_rejects(root: Location, rejected: Iterable[Rejected]) -> bool:
    """Write `<root>/rejected.parquet` (sorted rows); False when it already holds these bytes."""
    data = rejects_bytes(rejected)
    target = root.join(REJECTED_NAME)
    if target.is_file() and target.read_bytes() == data:
        return False
    target.write_bytes_atomic(data)
    return True


def read_rejects(root: Location) -> list[Rejected]:
    table = pq.read_table(io.BytesIO(root.join(REJECTED_NAME).read_bytes()))
    return [Rejected(**row) for row in table.to_pylist()]


def count_reasons(rejected: Iterable[Rejected]) -> dict[str, int]:
    return dict(sorted(Counter(r.reason for r in rejected).items()))
