"""A shard set's directory before and after its shards are written (no Ray):

    job, plan = prepare(section)        # build + index the source, plan every shard
    begin(job.output, plan)             # make the folder; drop a manifest of another plan
    results = [write_shard(job, task) for task in plan.shards]   # Ray tasks in `launch/`
    manifest, rejected = finish(job, plan, results, section)

Layout of `<output>/`: `<split>-NNNNNN.tar`, `manifest.json` (written last, only when its
content changes), `rejected.parquet`, `_state/<shard>.json` (per-shard re-run state).
"""

from __future__ import annotations

import json
import re
from typing import Any

import pyarrow.fs as pafs

from pipelines.config import ShardSection
from pipelines.data.image_encode import EncodeOptions
from pipelines.data.manifest import MANIFEST_NAME, Manifest, SplitInfo, write_manifest
from pipelines.data.rejects import REJECTED_NAME, count_reasons, write_rejects
from pipelines.data.shard_writer import (
    SHARD_FORMAT_VERSION,
    STATE_DIR,
    ShardResult,
    ShardWriteSettings,
)
from pipelines.data.sources import Rejected, build_source
from pipelines.data.write_plan import VAL, ShardPlan, make_plan
from pipelines.errors import DataError
from pipelines.storage import Location, locate

_OUR_SHARD_RE = re.compile(r"^(train|val)-\d{6}\.tar$")


def encode_options(section: ShardSection) -> EncodeOptions:
    return EncodeOptions(
        image_format=section.image_format,
        jpeg_quality=section.jpeg_quality,
        max_size=section.max_size,
        max_pixels=section.max_pixels,
    )


def prepare(section: ShardSection) -> tuple[ShardWriteSettings, ShardPlan]:
    """Build and index the source and plan every shard (driver side, deterministic)."""
    source = build_source(section.source)
    index = source.index()
    if not index.refs:
        raise DataError(
            f"shard.source: no usable inputs ({len(index.rejected)} rejected while indexing: "
            f"{count_reasons(index.rejected)})"
        )
    options = encode_options(section)
    plan = make_plan(
        index,
        samples_per_shard=section.samples_per_shard,
        val_fraction=section.val_fraction,
        seed=section.seed,
        train_per_class=section.train_per_class,
        train_subset_seed=section.train_subset_seed,
        settings={
            "shard_format": SHARD_FORMAT_VERSION,
            "source": source.describe(),
            "encode": options.describe(),
        },
    )
    return ShardWriteSettings(locate(section.output), source, plan.classes, options), plan


def begin(output: Location, plan: ShardPlan) -> None:
    """Create the folder, and remove a manifest of another plan before any shard is replaced,
    so a crash never leaves a manifest describing shards that are no longer there."""
    output.makedirs()
    path = output.join(MANIFEST_NAME)
    if not path.is_file():
        return
    try:
        previous = json.loads(path.read_bytes()).get("plan_fingerprint")
    except (ValueError, AttributeError):
        previous = None
    if previous != plan.fingerprint:
        path.delete()


def finish(
    job: ShardWriteSettings, plan: ShardPlan, results: list[ShardResult], section: ShardSection
) -> tuple[Manifest, list[Rejected]]:
    """Remove shards the plan no longer has, write `rejected.parquet` and `manifest.json`."""
    output = job.output
    remove_stale_shards(output, plan)
    rejected = [*plan.rejected, *(r for result in results for r in result.rejected)]
    write_rejects(output, rejected)
    manifest = build_manifest(plan, results, job.source.describe(), section, len(rejected))
    if not any(split.num_samples for split in manifest.splits.values()):
        raise DataError(
            f"{output.uri}: every input was rejected ({count_reasons(rejected)}); see "
            f"{output.join(REJECTED_NAME).uri}"
        )
    path = output.join(MANIFEST_NAME)
    new = (json.dumps(manifest.to_json(), indent=2) + "\n").encode()
    if not (path.is_file() and path.read_bytes() == new):
        write_manifest(output, manifest)
    return manifest, rejected


def build_manifest(
    plan: ShardPlan,
    results: list[ShardResult],
    source: dict[str, Any],
    section: ShardSection,
    num_rejected: int,
) -> Manifest:
    splits: dict[str, list] = {name: [] for name in plan.splits}
    if section.val_fraction > 0:
        splits.setdefault(VAL, [])
    for result in results:
        if result.sha256 is not None:  # a shard whose every input was rejected has no file
            splits[result.split].append(result.info())
    extra = {
        "settings": {
            "samples_per_shard": section.samples_per_shard,
            "val_fraction": section.val_fraction,
            "seed": section.seed,
            **_subset_settings(section),
            "image_format": section.image_format,
            "jpeg_quality": section.jpeg_quality,
            "max_size": section.max_size,
            "max_pixels": section.max_pixels,
        },
        "num_rejected": num_rejected,
        "rejected": REJECTED_NAME,
        "plan_fingerprint": plan.fingerprint,
    }
    return Manifest(
        classes=plan.classes,
        splits={name: SplitInfo(tuple(shards)) for name, shards in splits.items()},
        source=source,
        extra=extra,
    )


def _subset_settings(section: ShardSection) -> dict[str, int]:
    """Only for k-shot sets, so manifests of full sets stay as they were."""
    if section.train_per_class is None:
        return {}
    return {
        "train_per_class": section.train_per_class,
        "train_subset_seed": section.train_subset_seed,
    }


def remove_stale_shards(output: Location, plan: ShardPlan) -> list[str]:
    """Delete `train-/val-NNNNNN.tar` files (and their state) that the plan no longer has."""
    planned = {t.name for t in plan.shards}
    removed = []
    for folder, suffix in ((output, ""), (output.join(STATE_DIR), ".json")):
        selector = pafs.FileSelector(folder.path, allow_not_found=True)
        for entry in folder.fs.get_file_info(selector):
            name = entry.base_name
            shard = name[: -len(suffix)] if suffix and name.endswith(suffix) else name
            ours = entry.type == pafs.FileType.File and _OUR_SHARD_RE.match(shard)
            if ours and shard not in planned:
                folder.fs.delete_file(entry.path)
                removed.append(name)
    return removed
