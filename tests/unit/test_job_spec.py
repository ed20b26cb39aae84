"""What `vitpipe submit --stage ...` ships and runs, for every stage; no cluster needed (the
submissions themselves are tested against a real cluster in test_multinode.py)."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml

from launch.jobs.spec import STAGES, build_job
from pipelines.config.pipeline import pipeline_from_dict
from pipelines.errors import ConfigError

from train_fixtures import tiny_job, write_yaml

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def job_config(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    raw = tiny_job(Path("shards"), tmp_path)
    raw["shard"] = {"source": {"kind": "digits"}, "output": "out/shards"}
    return write_yaml(raw, tmp_path / "config.yaml")


def test_every_stage_has_its_command(job_config, tmp_path):
    assert set(STAGES) == {"shard", "pretrain", "finetune", "eval", "run"}
    base = ["vitpipe", "{stage}", "-c", "config.resolved.yaml", "--set", "cluster.address=auto"]
    expected = {
        ("shard", None): [],
        ("pretrain", None): ["--run-dir", "s3://b/runs/x", "--resume", "auto"],
        ("finetune", "s3://b/runs/x/checkpoints/step_0000004"): ["--resume", "never"],
        ("eval", "export"): [],
    }
    for (stage, init_from), extra in expected.items():
        flags = {"run_dir": "s3://b/runs/x", "resume": "auto"} if stage == "pretrain" else {}
        if stage == "finetune":
            flags = {"resume": "never"}
        spec = build_job(stage, job_config, ["train.total_steps=6"], init_from=init_from, **flags)
        argv = shlex.split(spec.entrypoint)
        head = [a.replace("{stage}", stage) for a in base]
        if init_from is not None:
            head += ["--from", init_from if "://" in init_from else str(tmp_path / init_from)]
        assert argv == head + extra + ["--no-progress"], argv
        shipped = yaml.safe_load(spec.config_text)
        assert shipped["train"]["total_steps"] == 6
        assert shipped["data"]["train_shards"] == str(tmp_path / "shards")  # absolute
        assert shipped["tracking"]["uri"] == f"sqlite:///{tmp_path / 'mlflow.db'}"
    pretrain = yaml.safe_load(build_job("pretrain", job_config, run_dir="s3://b/r").config_text)
    assert pretrain["run_dir"] == "s3://b/r"


def test_flags_a_stage_does_not_take_are_refused(job_config):
    cases = {
        (
            "finetune",
            None,
            None,
        ): "--stage finetune needs --from (an export, checkpoint or run dir)",
        ("eval", "x", "auto"): "--resume applies to --stage pretrain, finetune, not --stage eval",
        ("pretrain", "x", None): "--from applies to --stage finetune, eval, not --stage pretrain",
    }
    for (stage, init_from, resume), message in cases.items():
        with pytest.raises(ConfigError) as err:
            build_job(stage, job_config, init_from=init_from, resume=resume)
        assert err.value.problems == [message]
    with pytest.raises(ConfigError, match=r"^--run-dir applies to .*not --stage shard$"):
        build_job("shard", job_config, run_dir="r")


def test_run_ships_the_pipeline_resolved(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = build_job("run", REPO / "configs" / "demo.yaml", ["finetune.train.total_steps=40"])
    assert shlex.split(spec.entrypoint) == [
        "vitpipe",
        "run",
        "-c",
        "config.resolved.yaml",
        "--no-progress",
    ]
    raw = yaml.safe_load(spec.config_text)
    assert raw["run_dir"] == str(tmp_path / "runs" / "demo")
    assert "shared" not in raw  # merged into each stage, which joins the cluster it runs on
    assert raw["pretrain"]["cluster"]["address"] == raw["finetune"]["cluster"]["address"] == "auto"
    _, stages = pipeline_from_dict(raw)
    assert stages["pretrain"].cluster.address == "auto"
    assert stages["finetune"].train.total_steps == 40
    tracking = stages["pretrain"].tracking.uri
    assert tracking == "sqlite:///mlflow.db" or tracking.startswith("sqlite:////")

    with pytest.raises(ConfigError) as err:
        build_job("run", REPO / "configs" / "demo.yaml", ["finetune.train.total_steps=four"])
    assert all(p.startswith(("pretrain.", "finetune.")) for p in err.value.problems)
