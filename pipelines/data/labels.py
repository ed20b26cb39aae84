"""Which member of a WebDataset sample is its image, where its label is, and how it becomes a class index; the one rule the
indexer (`vitpipe shard` with `shard.source.kind: webdataset`) and the loader both apply, so a
sample the index counted is a sample the loader can label.

`label_key` is `cls` (the `.cls` member: ASCII digits only, surrounding whitespace allowed) or
`json:<field>` (a field of the `.json` member; dots walk into nested objects, `json:meta.label`).
A value is an integer class index, or a class name looked up in the manifest's classes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

LABEL_KEY_PATTERN = r"^(cls|json:[A-Za-z0-9_][A-Za-z0-9_.\-]*)$"
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")  # the first one a sample has is its image
# More digits than any class count: Python's int() also reads "1_0", "+3", " -2" and non-ASCII
# digits, and a label of thousands of digits costs quadratic time to parse.
MAX_LABEL_DIGITS = 18


def image_field(fields: Mapping[str, bytes]) -> str | None:
    """The extension of a sample's image member, or None if it has none."""
    return next((e for e in IMAGE_EXTENSIONS if e in fields), None)


class LabelError(ValueError):
    """No usable label; `reason` is a `rejected.parquet` reason."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def raw_label(fields: Mapping[str, bytes], label_key: str) -> int | str:
    """The label value of a sample's members: an int index or a class name."""
    if label_key == "cls":
        data = fields.get("cls")
        if data is None:
            raise LabelError("label_missing", "no .cls member")
        text = data.strip()
        if not text.isdigit() or len(text) > MAX_LABEL_DIGITS:  # bytes: ASCII 0-9 only
            raise LabelError(
                "label_invalid", f".cls is not a class index (ASCII digits): {data[:20]!r}"
            )
        return int(text)
    path = label_key.removeprefix("json:")
    data = fields.get("json")
    if data is None:
        raise LabelError("label_missing", "no .json member")
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, ValueError):
        raise LabelError("label_invalid", f".json is not valid JSON: {data[:40]!r}") from None
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            raise LabelError("label_missing", f".json has no field {path!r}")
        value = value[part]
    if isinstance(value, bool) or not isinstance(value, int | str) or value == "":
        raise LabelError("label_invalid", f".json field {path!r} is {value!r}, not a class")
    return value


def label_index(value: int | str, classes: Mapping[str, int], num_classes: int) -> int:
    """A raw label as a class index in 0..num_classes-1; `classes` maps names to indices."""
    if isinstance(value, str):
        if value not in classes:
            raise LabelError("label_out_of_range", f"label {value!r} is not one of the classes")
        return classes[value]
    if not 0 <= value < num_classes:
        raise LabelError("label_out_of_range", f"label {value} is outside 0..{num_classes - 1}")
    return value
