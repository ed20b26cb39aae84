"""`shard.source` is one typed section per kind, told apart by `kind`: a field of another kind is
an error naming it, every shipped config builds its source, and the stored form is unchanged."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest
import yaml

from pipelines.config import StageConfig, config_from_dict, dump_config, load_config
from pipelines.config.paths import with_absolute_paths
from pipelines.config.pipeline import load_pipeline
from pipelines.data.sources import (
    FileSection,
    Source,
    SourceSection,
    WebDatasetSection,
    build_source,
    source_section,
)
from pipelines.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
KINDS = ("imagefolder", "parquet", "csv", "fractal", "digits", "webdataset", "glyphs")


def problems(source: dict) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config_from_dict({"shard": {"source": source}})
    return info.value.problems


def shipped_jobs() -> list[StageConfig]:
    jobs = [load_config(path) for path in sorted((CONFIGS / "shard").glob("*.yaml"))]
    jobs.append(load_config(CONFIGS / "finetune" / "digits.yaml"))
    jobs.extend(load_pipeline(CONFIGS / "demo.yaml")[1].values())
    return jobs


def test_the_union_has_every_kind():
    members = typing.get_args(typing.get_args(SourceSection)[0])
    assert tuple(typing.get_args(m.model_fields["kind"].annotation)[0] for m in members) == KINDS


def test_a_field_of_another_kind_is_one_line_naming_it():
    found = problems({"kind": "imagefolder", "path": "data", "num_points": 5000})
    assert found == [
        "shard.source.num_points: not a field of kind 'imagefolder' (it is for kind 'fractal'); "
        "allowed: kind, max_file_bytes, path"
    ]
    (found,) = problems({"kind": "digits", "path": "data"})
    assert found.startswith("shard.source.path: not a field of kind 'digits' (it is for kind ")


def test_a_misspelled_key_gets_a_close_match_from_its_own_kind():
    found = problems({"kind": "fractal", "num_point": 5000})
    assert found == [
        "shard.source.num_point: unknown key for kind 'fractal'; did you mean 'num_points'?"
    ]


@pytest.mark.parametrize(
    ("kind", "hint"), [("imagefoldr", "did you mean 'imagefolder'? "), ("mnist", "")]
)
def test_an_unknown_kind_names_the_allowed_kinds(kind, hint):
    found = problems({"kind": kind, "path": "data"})
    assert found == [f"shard.source.kind: unknown kind {kind!r}; {hint}allowed: {', '.join(KINDS)}"]


def test_a_missing_kind_names_the_allowed_kinds():
    found = problems({"path": "data"})
    assert found == [f"shard.source.kind: required, missing; allowed: {', '.join(KINDS)}"]


@pytest.mark.parametrize("kind", ["imagefolder", "parquet", "csv"])
def test_a_file_source_needs_its_path(kind):
    assert problems({"kind": kind}) == [
        f"shard.source.path: required for kind {kind!r}, missing: the folder or file to read"
    ]
    (empty,) = problems({"kind": kind, "path": ""})
    assert empty.startswith("shard.source.path: ")


def test_webdataset_needs_its_urls():
    (missing,) = problems({"kind": "webdataset"})
    assert missing.startswith("shard.source.urls: required for kind 'webdataset', missing: ")
    assert "'/data/in1k/train-{0000..1023}.tar'" in missing  # the example says how to write it
    with pytest.raises(ConfigError, match="indexed in place"):
        build_source(source_section(kind="webdataset", urls="/data/train-{0..3}.tar"))


def test_every_shipped_source_builds_and_round_trips():
    jobs = [job for job in shipped_jobs() if job.shard is not None]
    assert {job.shard.source.kind for job in jobs} == set(KINDS) - {"webdataset"}
    for job in jobs:
        source = build_source(job.shard.source)
        assert isinstance(source, Source) and source.kind == job.shard.source.kind
        assert config_from_dict(yaml.safe_load(dump_config(job))) == job
        assert job.to_dict()["shard"]["source"] == job.shard.source.model_dump(mode="json")


def test_only_a_file_source_has_its_path_made_absolute(tmp_path):
    base = tmp_path / "here"
    jobs = {job.shard.source.kind: job for job in shipped_jobs() if job.shard is not None}
    csv = with_absolute_paths(jobs["csv"], tmp_path / "run", base).shard.source
    assert isinstance(csv, FileSection) and csv.path == str(base / "data" / "train.csv")
    fractal = with_absolute_paths(jobs["fractal"], tmp_path / "run", base).shard.source
    assert fractal == jobs["fractal"].shard.source
    assert "path" not in fractal.model_dump()


def test_the_manifest_description_is_the_same_as_before():
    fractal = source_section(kind="fractal", num_classes=3, images_per_class=2, image_size=16)
    assert fractal.build().describe() == {
        "kind": "fractal",
        "num_classes": 3,
        "images_per_class": 2,
        "image_size": 16,
        "num_points": 20_000,
        "seed": 0,
    }
    parquet = source_section(kind="parquet", path="data/train.parquet")
    assert parquet.build().describe() == {
        "kind": "parquet",
        "path": "data/train.parquet",
        "image_column": "image",
        "label_column": "label",
    }
    wds = source_section(kind="webdataset", urls=["/a/train-0.tar"], label_key="json:y")
    assert isinstance(wds, WebDatasetSection)
    assert list(wds.describe().items()) == [
        ("kind", "webdataset"),
        ("urls", ["/a/train-0.tar"]),
        ("val_urls", None),
        ("label_key", "json:y"),
        ("classes_file", None),
    ]
