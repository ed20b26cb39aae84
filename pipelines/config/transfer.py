"""`transfer:` in a pipeline config: the label-efficiency curve, i.e. fine-tunes on k labelled
images per class, from the pretrained checkpoint and from random initialisation, per seed.

    transfer:
      seeds: [0, 1, 2]          # each seed picks the k-shot subset, the data order, the scratch init
      points:
        - shots: 5              # k labelled training images per class (a k-shot shard set)
          finetune: {train: {total_steps: 100, global_batch_size: 16, micro_batch_size: 8}}
        - shots: all            # the whole train split
          seeds: [0]
          finetune: {}          # merged into the pipeline's finetune job config

`transfer_runs()` turns it into one validated `StageConfig` per (k, seed, init); the driver gives
each its run dir, and each (k, seed) its shard dir (both inits train on the same images).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from pipelines.config.loader import config_from_dict
from pipelines.config.stage import StageConfig
from pipelines.errors import ConfigError
from pipelines.section import Section

INITS = ("pretrained", "scratch")
ALL = "all"


class TransferPointSection(Section):
    shots: int | Literal["all"]
    seeds: list[int] | None = Field(None, min_length=1, description="None: transfer.seeds")
    finetune: dict[str, Any] = Field({}, description="merged into the finetune job config")


class TransferSection(Section):
    seeds: list[int] = Field([0, 1, 2], min_length=1)
    inits: list[Literal["pretrained", "scratch"]] = Field(list(INITS), min_length=1)
    points: list[TransferPointSection] = Field(min_length=1)


@dataclass(frozen=True)
class TransferRun:
    """One fine-tune of the curve. `shard_key` names its shard set (shared by both inits)."""

    shots: int | str
    seed: int
    init: str
    config: StageConfig

    @property
    def name(self) -> str:
        return f"k{self.shots}_s{self.seed}_{self.init}"

    @property
    def shard_key(self) -> str:
        return f"k{self.shots}_s{self.seed}" if self.shots != ALL else "all"


def transfer_runs(
    section: TransferSection, finetune: dict[str, Any], *, root: Path | None = None
) -> list[TransferRun]:
    """Every run of the curve, validated (`ConfigError` lists every problem, prefixed
    `transfer.points[i]`). `finetune`: the finetune stage as a dict, `shared:` merged in.
    With `root`, run dirs are `<root>/<name>` and k-shot shards `<root>/shards/<shard key>`."""
    runs: list[TransferRun] = []
    problems: list[str] = []
    for i, point in enumerate(section.points):
        raw = deep_merge(finetune, point.finetune)
        if point.shots != ALL and not raw.get("shard"):
            problems.append(
                f"transfer.points[{i}]: shots={point.shots} needs the finetune stage's `shard:` "
                "section (k-shot sets are written from its source)"
            )
            continue
        for seed in point.seeds or section.seeds:
            for init in section.inits:
                run = _run_config(raw, point.shots, seed, init, root)
                try:
                    config = config_from_dict(run)
                except ConfigError as err:
                    problems.extend(f"transfer.points[{i}].{p}" for p in err.problems)
                    break
                runs.append(TransferRun(point.shots, seed, init, config))
    if problems:
        raise ConfigError(sorted(set(problems), key=problems.index))
    return runs


def _run_config(
    raw: dict[str, Any], shots: int | str, seed: int, init: str, root: Path | None
) -> dict[str, Any]:
    name = f"k{shots}_s{seed}_{init}"
    overrides: dict[str, Any] = {
        "name": f"{raw.get('name', 'finetune')}-{name}",
        "train": {"seed": seed},
    }
    if shots != ALL:
        overrides["shard"] = {"train_per_class": shots, "train_subset_seed": seed}
    if root is not None:
        overrides["run_dir"] = str(root / name)
        if raw.get("shard"):  # every run of a (k, seed) reads the same shard set
            key = f"k{shots}_s{seed}" if shots != ALL else ALL
            overrides.setdefault("shard", {})["output"] = str(root / "shards" / key)
            overrides["data"] = {"train_shards": None}
    return deep_merge(raw, overrides)


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """`top` over `base`, recursively for dicts (neither is changed)."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out
