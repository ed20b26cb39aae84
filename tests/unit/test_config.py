"""The config contract: strict typed sections, every problem reported at once, clear hints."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from pipelines.config import config_from_dict, dump_config, load_config, parse_override_value
from pipelines.errors import ConfigError


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def problems(path: Path, overrides: list[str] = ()) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return info.value.problems


def test_defaults_validate_and_name_comes_from_file(tmp_path):
    config = load_config(write(tmp_path, "", "my-run.yaml"))
    assert config.name == "my-run"
    assert str(config.resolved_run_dir) == "runs/my-run"
    assert config.deepspeed.zero_stage == 2


def test_all_three_classic_mistakes_reported_together(tmp_path):
    path = write(
        tmp_path,
        "model:\n  name: vit_base_patch16\n  img_size: 30\noptim:\n  lr: 3e-4\n  wieght_decay: 0.1\n",
    )
    found = problems(path)
    assert len(found) == 3
    joined = "\n".join(found)
    assert "optim.wieght_decay: unknown key; did you mean 'weight_decay'?" in joined
    assert "optim.lr" in joined and "3.0e-4" in joined
    assert "model.img_size=30" in joined and "patch size 16" in joined


def test_yaml_booleans_for_strings_are_rejected_with_a_hint(tmp_path):
    found = problems(write(tmp_path, "tracking:\n  experiment: no\n"))
    assert found == [
        "tracking.experiment: expected a string, got False (YAML reads yes/no/on/off as "
        "booleans; quote the value)"
    ]


def test_unknown_section_names_the_closest_one(tmp_path):
    assert problems(write(tmp_path, "optimizer:\n  lr: 0.1\n")) == [
        "optimizer: unknown key; did you mean 'optim'?"
    ]


def test_frozen(tmp_path):
    config = load_config(write(tmp_path, ""))
    with pytest.raises(ValidationError):
        config.train.total_steps = 5  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("train:\n  global_batch_size: 10\n  micro_batch_size: 4\n", "not divisible"),
        (
            "train:\n  global_batch_size: 16\n  micro_batch_size: 4\n  grad_accum_steps: 1\n",
            "grad_accum_steps to 2",
        ),
        ("train:\n  total_steps: 10\nschedule:\n  warmup_steps: 10\n", "warmup_steps=10"),
        ("deepspeed:\n  zero_stage: 4\n", "deepspeed.zero_stage"),
        ("deepspeed:\n  zero_stage: 2\n  offload_param: true\n", "offload_param"),
        ("model:\n  name: vit_giant_patch16\n", "vit_{tiny,small,base,large,huge}"),
        ("data:\n  decode_device: cuda\n", "cluster.use_gpu"),
    ],
)
def test_cross_field_checks(tmp_path, text, needle):
    assert any(needle in p for p in problems(write(tmp_path, text)))


def test_overrides_apply_and_coerce_numbers(tmp_path):
    path = write(tmp_path, "optim:\n  lr: 0.1\n")
    config = load_config(
        path, ["optim.lr=3e-4", "train.total_steps=7", "model.pool=mean", "cluster.use_gpu=no"]
    )
    assert config.optim.lr == pytest.approx(3e-4)
    assert config.train.total_steps == 7
    assert config.model.pool == "mean"
    assert config.cluster.use_gpu is False


def test_override_errors_are_clear(tmp_path):
    path = write(tmp_path, "")
    assert problems(path, ["optim.lrr=1"]) == ["optim.lrr: unknown key; did you mean 'lr'?"]
    assert problems(path, ["optim"]) == ["--set 'optim': expected section.field=value"]
    assert "is a value, not a section" in problems(path, ["name.x=1"])[0]


def test_parse_override_value():
    assert parse_override_value("1e-3") == pytest.approx(1e-3)
    assert parse_override_value("12") == 12
    assert parse_override_value("[1, 2]") == [1, 2]
    assert parse_override_value("null") is None
    assert parse_override_value("abc") == "abc"


def test_bad_files(tmp_path):
    assert "does not exist" in problems(tmp_path / "nope.yaml")[0]
    assert "not valid YAML at line" in problems(write(tmp_path, "a: [1,\n"))[0]
    assert "must be a mapping" in problems(write(tmp_path, "- 1\n"))[0]


def test_resolved_config_round_trips(tmp_path):
    config = load_config(write(tmp_path, "train:\n  total_steps: 5\n"))
    import yaml

    again = config_from_dict(yaml.safe_load(dump_config(config)))
    assert again == config
    assert again.fingerprint("model") == config.fingerprint("model")
    assert config.fingerprint("model") != config.fingerprint("train")
