"""Where a job reads and writes, made explicit and absolute before anything starts: once, by
the CLI, relative to where the user runs the command (workers run elsewhere: Ray moves them into
its own directories; `vitpipe submit` runs them on another machine).

Defaults that depend on the run dir are filled in here: shards go to `<run dir>/shards` and
training reads what was sharded.
"""

from __future__ import annotations

import os
from pathlib import Path

from pipelines.config.data import MixSourceSection
from pipelines.config.stage import StageConfig
from pipelines.data.sources import FileSection
from pipelines.layout import SHARDS_DIR
from pipelines.storage import locate

_SQLITE = "sqlite:///"


def absolute(value: str | None, base: Path | None = None) -> str | None:
    """A local path made absolute against `base` (default: the working directory); URIs and
    None pass through."""
    if not value or "://" in value:
        return value
    return str(((base or Path.cwd()) / os.path.expanduser(value)).resolve())


def tracking_link_warning(uri: str, base: Path | None = None) -> str | None:
    """One line when `tracking.uri` is a relative `sqlite:///` file that a symlink leads out of
    `base` (default: the working directory): every run would be logged into that other file.
    A warning, not a refusal: a link to a roomier disk is a fair choice, a link planted in a
    shared checkout is not, and only the user knows which this is. A path written with `..`
    says where it goes and is left alone."""
    if not uri.startswith(_SQLITE) or uri.startswith(_SQLITE + "/"):
        return None
    base = (base or Path.cwd()).resolve()
    given = Path(os.path.normpath(base / os.path.expanduser(uri.removeprefix(_SQLITE))))
    real = given.resolve()
    if not given.is_relative_to(base) or real.is_relative_to(base):
        return None
    return (
        f"warning: tracking.uri {uri}: {given} is a symlink out of {base}; runs are logged "
        f"into {real}"
    )


def absolute_resume(resume: str) -> str:
    """`--resume`: `auto` and `never` as they are, a checkpoint path made absolute."""
    return resume if resume in ("auto", "never") else absolute(resume)


def _absolute_train_shards(
    value: str | list[MixSourceSection] | None, base: Path
) -> str | list[MixSourceSection] | None:
    """`data.train_shards`: the path, or every mixed source's path, made absolute."""
    if isinstance(value, list):
        return [s.model_copy(update={"shards": absolute(s.shards, base)}) for s in value]
    return absolute(value, base)


def with_absolute_paths(
    config: StageConfig, run_dir: Path | str | None = None, base: Path | None = None
) -> StageConfig:
    base = base or Path.cwd()
    resolved_run_dir = absolute(str(run_dir or config.resolved_run_dir), base)
    update: dict = {"run_dir": resolved_run_dir}
    shard_output = None
    if config.shard is not None:
        shard_output = absolute(config.shard.output, base) or (
            locate(resolved_run_dir).join(SHARDS_DIR).uri
        )
        source = config.shard.source
        if isinstance(source, FileSection):
            source = source.model_copy(update={"path": absolute(source.path, base)})
        update["shard"] = config.shard.model_copy(update={"output": shard_output, "source": source})
    update["data"] = config.data.model_copy(
        update={
            "train_shards": _absolute_train_shards(config.data.train_shards, base) or shard_output,
            "val_shards": absolute(config.data.val_shards, base),
            "fewshot_shards": absolute(config.data.fewshot_shards, base),
        }
    )
    update["cluster"] = config.cluster.model_copy(
        update={"storage_path": absolute(config.cluster.storage_path, base)}
    )
    uri = config.tracking.uri
    if uri.startswith(_SQLITE) and not uri.startswith(_SQLITE + "/"):
        sqlite_file = absolute(uri.removeprefix(_SQLITE), base)
        update["tracking"] = config.tracking.model_copy(update={"uri": _SQLITE + sqlite_file})
    return config.model_copy(update=update)
