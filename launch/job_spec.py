"""What `vitpipe submit` ships for a stage: the validated config with every local path made
absolute (the job runs from a temporary copy on the head node), and the command it runs there.

Stages: `shard`, `pretrain`, `finetune` and `eval` take a job config; `run` takes a pipeline
config (`vitpipe run`). `finetune` and `eval` need `--from`, which may be a storage URI
(passed through as written) or a local path (made absolute: it must exist at that path on the
head node too, i.e. on a shared filesystem).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from launch.jobs_api import CONFIG_NAME, CONSOLE_SCRIPT, absolute_resume, for_cluster
from pipelines.config import dump_config, load_config
from pipelines.config.loader import apply_overrides, read_yaml
from pipelines.config.pipeline import STAGES as PIPELINE_STAGES
from pipelines.config.pipeline import pipeline_from_dict
from pipelines.errors import ConfigError

STAGES = ("pretrain", "shard", "finetune", "eval", "run")
# Which stage takes which flag (as its own `vitpipe <stage>` command does).
_TAKES = {
    "--run-dir": ("pretrain", "finetune", "eval", "run"),
    "--resume": ("pretrain", "finetune"),
    "--from": ("finetune", "eval"),
}


@dataclass(frozen=True)
class JobSpec:
    stage: str
    name: str  # the config's name (job id, metadata)
    config_text: str  # shipped as CONFIG_NAME in the job's working_dir
    entrypoint: str


def build_job(
    stage: str,
    config_path: str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    run_dir: str | None = None,
    resume: str | None = None,
    init_from: str | None = None,
) -> JobSpec:
    """Validate the config for `stage` and build what the job runs; `ConfigError` (nothing is
    submitted) on a bad config or a flag the stage does not take."""
    if stage not in STAGES:
        raise ConfigError(f"--stage {stage!r}: one of {', '.join(STAGES)}")
    for flag, value in (("--run-dir", run_dir), ("--resume", resume), ("--from", init_from)):
        if value is not None and stage not in _TAKES[flag]:
            takers = ", ".join(_TAKES[flag])
            raise ConfigError(f"{flag} applies to --stage {takers}, not --stage {stage}")
    if stage in _TAKES["--from"] and init_from is None:
        raise ConfigError(f"--stage {stage} needs --from (an export, checkpoint or run dir)")
    if stage == "run":
        return _pipeline_job(config_path, overrides, run_dir)

    config = load_config(config_path, overrides)
    if stage == "shard" and config.shard is None:
        raise ConfigError(
            f"shard: {config_path} has no `shard:` section; `--stage shard` needs one"
        )
    config = for_cluster(config, run_dir)
    argv = [CONSOLE_SCRIPT, stage, "-c", CONFIG_NAME, "--set", "cluster.address=auto"]
    if init_from is not None:
        argv += ["--from", _absolute(init_from)]
    if run_dir is not None:
        argv += ["--run-dir", config.run_dir]
    if resume is not None:
        argv += ["--resume", absolute_resume(resume)]
    argv.append("--no-progress")
    return JobSpec(stage, config.name, dump_config(config), shlex.join(argv))


def _pipeline_job(
    config_path: str | Path, overrides: list[str] | tuple[str, ...], run_dir: str | None
) -> JobSpec:
    path = Path(config_path)
    raw = apply_overrides(read_yaml(path), overrides)
    raw.setdefault("name", path.stem)
    pipeline, _ = pipeline_from_dict(raw)  # every problem of every stage, before submitting
    raw["run_dir"] = _absolute(str(run_dir or raw.get("run_dir") or pipeline.resolved_run_dir))
    for section in ("shared", *PIPELINE_STAGES):
        raw[section] = _absolute_sections(raw.get(section) or {})
    # The job's stages join the cluster the job runs on.
    raw["shared"].setdefault("cluster", {})["address"] = "auto"
    for stage in PIPELINE_STAGES:
        if "address" in (raw[stage].get("cluster") or {}):
            raw[stage]["cluster"]["address"] = "auto"
    pipeline_from_dict(raw)  # still valid once resolved
    argv = [CONSOLE_SCRIPT, "run", "-c", CONFIG_NAME, "--no-progress"]
    text = yaml.safe_dump(raw, sort_keys=False)
    return JobSpec("run", pipeline.name, text, shlex.join(argv))


def _absolute_sections(sections: dict[str, Any]) -> dict[str, Any]:
    """A pipeline's stage (or `shared:`) sections with their local paths made absolute."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in sections.items()}
    for section, keys in (
        ("data", ("train_shards", "val_shards", "fewshot_shards")),
        ("shard", ("output",)),
        ("cluster", ("storage_path",)),
    ):
        for key in keys:
            if isinstance(out.get(section), dict) and out[section].get(key):
                out[section][key] = _absolute(out[section][key])
    source = (out.get("shard") or {}).get("source")
    if isinstance(source, dict) and source.get("path"):
        out["shard"]["source"] = {**source, "path": _absolute(source["path"])}
    uri = (out.get("tracking") or {}).get("uri", "")
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        out["tracking"]["uri"] = "sqlite:///" + _absolute(uri.removeprefix("sqlite:///"))
    return out


def _absolute(path: str) -> str:
    if "://" in path:
        return path
    return str(Path(path).expanduser().resolve())
