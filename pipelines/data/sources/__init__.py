"""Inputs for `vitpipe shard`: one module per kind, all behind the small `Source` interface."""

from __future__ import annotations

from pipelines.config.data import SourceSection
from pipelines.data.sources.base import (
    REJECT_REASONS,
    Decoded,
    Item,
    Rejected,
    SampleRef,
    Source,
    SourceIndex,
)


def build_source(section: SourceSection) -> Source:
    """The source a `shard.source` config section describes (no I/O until `index()`)."""
    if section.kind == "imagefolder":
        from pipelines.data.sources.imagefolder import ImageFolderSource

        return ImageFolderSource(section.path, section.max_file_bytes)
    if section.kind == "parquet":
        from pipelines.data.sources.parquet import ParquetSource

        return ParquetSource(
            section.path,
            section.image_column,
            section.label_column,
            section.path_column,
            section.max_file_bytes,
        )
    if section.kind == "csv":
        from pipelines.data.sources.csvfile import CsvSource

        return CsvSource(
            section.path, section.path_column, section.label_column, section.max_file_bytes
        )
    if section.kind == "digits":
        from pipelines.data.sources.digits import DigitsSource

        return DigitsSource(section.image_size)
    if section.kind == "fractal":
        from pipelines.data.sources.fractal import FractalSource

        return FractalSource(
            section.num_classes,
            section.images_per_class,
            section.image_size,
            section.num_points,
            section.seed,
            section.random_orientation,
        )
    if section.kind == "glyphs":
        from pipelines.data.sources.glyphs import GlyphSource

        return GlyphSource(
            section.num_classes,
            section.images_per_class,
            section.image_size,
            section.seed,
            section.characters,
            section.low_res,
        )
    raise AssertionError(f"unknown source kind {section.kind!r}")


__all__ = [
    "REJECT_REASONS",
    "Decoded",
    "Item",
    "Rejected",
    "SampleRef",
    "Source",
    "SourceIndex",
    "build_source",
]
