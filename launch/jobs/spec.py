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

import yaml

from launch.jobs.api import CONFIG_NAME, CONSOLE_SCRIPT
from pipelines.config import dump_config, load_config
from pipelines.config.paths import absolute, absolute_resume, with_absolute_paths
from pipelines.config.pipeline import load_pipeline, resolve_stages
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
    config = with_absolute_paths(config, run_dir)
    argv = [CONSOLE_SCRIPT, stage, "-c", CONFIG_NAME, "--set", "cluster.address=auto"]
    if init_from is not None:
        argv += ["--from", absolute(init_from)]
    if run_dir is not None:
        argv += ["--run-dir", config.run_dir]
    if resume is not None:
        argv += ["--resume", absolute_resume(resume)]
    argv.append("--no-progress")
    return JobSpec(stage, config.name, dump_config(config), shlex.join(argv))


def _pipeline_job(
    config_path: str | Path, overrides: list[str] | tuple[str, ...], run_dir: str | None
) -> JobSpec:
    """The pipeline with every stage resolved here (absolute paths, stage run dirs), joining
    the cluster the job runs on."""
    pipeline, stages = load_pipeline(config_path, overrides)
    root, stages = resolve_stages(pipeline, stages, run_dir)
    raw = pipeline.model_dump(mode="json", exclude={"shared"})
    raw["run_dir"] = root.uri
    for name, config in stages.items():
        cluster = config.cluster.model_copy(update={"address": "auto"})
        raw[name] = config.model_copy(update={"cluster": cluster}).to_dict()
    argv = [CONSOLE_SCRIPT, "run", "-c", CONFIG_NAME, "--no-progress"]
    return JobSpec("run", pipeline.name, yaml.safe_dump(raw, sort_keys=False), shlex.join(argv))
