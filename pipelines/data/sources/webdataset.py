"""`kind: webdataset`: the user's own WebDataset shards, indexed where they are and never
rewritten, so there is no `Source` here: `pipelines.data.wds_index` reads the shards this section
names."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from pipelines.data.labels import LABEL_KEY_PATTERN
from pipelines.section import Section

ShardUrls = str | list[str]
DEFAULT_MAX_CLASSES = 1_000_000


class WebDatasetSection(Section):
    kind: Literal["webdataset"]
    urls: ShardUrls = Field(
        min_length=1,
        description="the train shards, indexed in place: a brace pattern "
        "('/data/in1k/train-{0000..1023}.tar'), a directory of .tar files, or URIs",
    )
    val_urls: ShardUrls | None = Field(
        None, description="the val shards (else shard.val_fraction of whole shards)"
    )
    label_key: str = Field(
        "cls",
        pattern=LABEL_KEY_PATTERN,
        description="'cls' (the .cls member) or 'json:<field>' (a .json field)",
    )
    classes_file: str | None = Field(
        None, description="class names, one per line; line i names class i"
    )
    max_classes: int = Field(
        DEFAULT_MAX_CLASSES,
        ge=1,
        description="the most classes the labels may make (a label of 3000000 would make "
        "3,000,001); more is an error naming the shard",
    )

    def describe(self) -> dict[str, Any]:
        """The source's identity for the manifest, as `Source.describe()` gives it for others."""
        return {
            "kind": self.kind,
            "urls": self.urls,
            "val_urls": self.val_urls,
            "label_key": self.label_key,
            "classes_file": self.classes_file,
        }
