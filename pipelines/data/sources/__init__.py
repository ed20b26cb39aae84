"""Inputs for `vitpipe shard`: one module per kind, all behind the small `Source` interface, each
with the config section (`shard.source`) it is built from. `SourceSection` is their union, told
apart by `kind`, so a field of another kind is an unknown key, not a silently ignored one."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, TypeAdapter

from pipelines.data.sources.base import (
    REJECT_REASONS,
    Decoded,
    Item,
    Rejected,
    SampleRef,
    Source,
    SourceIndex,
)
from pipelines.data.sources.csvfile import CsvSection
from pipelines.data.sources.digits import DigitsSection
from pipelines.data.sources.files import FileSection
from pipelines.data.sources.fractal import FractalSection
from pipelines.data.sources.glyphs import GlyphSection
from pipelines.data.sources.imagefolder import ImageFolderSection
from pipelines.data.sources.parquet import ParquetSection
from pipelines.data.sources.webdataset import WebDatasetSection
from pipelines.errors import ConfigError

SourceSection = Annotated[
    ImageFolderSection
    | ParquetSection
    | CsvSection
    | FractalSection
    | DigitsSection
    | WebDatasetSection
    | GlyphSection,
    Field(discriminator="kind"),
]
_SOURCE_SECTION: TypeAdapter[SourceSection] = TypeAdapter(SourceSection)


def source_section(**fields: Any) -> SourceSection:
    """The section of `fields["kind"]`, validated as `shard.source` is (for code and tests)."""
    return _SOURCE_SECTION.validate_python(fields)


def build_source(section: SourceSection) -> Source:
    """The source a `shard.source` section describes (no I/O until `index()`)."""
    if isinstance(section, WebDatasetSection):
        raise ConfigError(
            "shard.source.kind='webdataset' has no source to write shards from: its shards are "
            "indexed in place (pipelines.data.wds_index)"
        )
    return section.build()


__all__ = [
    "REJECT_REASONS",
    "CsvSection",
    "Decoded",
    "DigitsSection",
    "FileSection",
    "FractalSection",
    "GlyphSection",
    "ImageFolderSection",
    "Item",
    "ParquetSection",
    "Rejected",
    "SampleRef",
    "Source",
    "SourceIndex",
    "SourceSection",
    "WebDatasetSection",
    "build_source",
    "source_section",
]
