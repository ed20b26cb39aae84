"""The loader's checkpointed state as JSON: where a rank is in which epoch, under which topology.

`encode_state` / `decode_state` are the one place that knows the format; `decode_state` checks a
state against the loader it is loaded into (same split, shard list and seed) and raises
`DataError` with the reason otherwise.

Resuming
--------
- Same topology (world size, workers, micro-batch, shuffle buffer, repeated_aug): the loader
  yields exactly the batches the uninterrupted run would have yielded next, bit for bit.
- Different topology mid-epoch: the epoch is continued, not restarted. The samples the old
  topology consumed are re-derived from the plan (a pure function), the remaining samples of the
  epoch, in global order, are split evenly over the new consumers with the usual remainder rule,
  and the next epoch uses the new topology from its start. No sample is repeated in the epoch
  (with `data.repeated_aug`, no repeat group: a consumed group leaves the pool whole);
  the remainder of the re-split (fewer than new consumers x micro-batch samples) is dropped.
  `describe_resume()` says which of the two happened, with the numbers, for the logs.
The state must come from the same shard list (manifest fingerprint; for a mix, every source and
its share), the same seed and the same excluded samples (`exclusion_digest`, recorded only when
samples are excluded), else `DataError`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipelines.data.loader.read_plan import Segment, Topology
from pipelines.data.manifest import ShardInfo, SplitInfo
from pipelines.errors import DataError

STATE_VERSION = 1


def split_fingerprint(split: str, info: SplitInfo, label_key: str = "cls") -> str:
    """A short hash of a split's shard list: names, sample counts and content hashes, and for
    indexed shards (format 2) the skipped runs and the label key, which decide what sample i is.
    """
    shards = [
        [s.name, s.samples, s.sha256, *([list(s.skip)] if s.skip else [])] for s in info.shards
    ]
    described = {"split": split, "shards": shards}
    if label_key != "cls":
        described["label_key"] = label_key
    text = json.dumps(described, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def exclusion_digest(shards: Sequence[ShardInfo], excluded: Mapping[int, np.ndarray]) -> str | None:
    """A short hash of which samples are left out (shard sha256 and offsets); None: none are."""
    if not excluded:
        return None
    listed = sorted([shards[i].sha256, i, offsets.tolist()] for i, offsets in excluded.items())
    return hashlib.sha256(json.dumps(listed).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class LoaderState:
    split: str
    fingerprint: str
    seed: int
    epoch: int
    position: int
    topology: Topology
    history: tuple[Segment, ...]
    exclude: str | None = None  # exclusion_digest


def encode_state(state: LoaderState) -> dict[str, Any]:
    """JSON-serialisable, identical on every rank."""
    return {
        "version": STATE_VERSION,
        "split": state.split,
        "manifest_fingerprint": state.fingerprint,
        "seed": state.seed,
        "epoch": state.epoch,
        "position": state.position,
        **state.topology.to_dict(),
        "history": [{**s.topology.to_dict(), "position": s.position} for s in state.history],
        **({"exclude_digest": state.exclude} if state.exclude else {}),
    }


def decode_state(
    state: dict[str, Any],
    *,
    split: str,
    fingerprint: str,
    seed: int,
    where: str,
    exclude: str | None = None,
) -> LoaderState:
    """Parse `state` and check it belongs to split `split` of `where` with this seed and these
    excluded samples."""
    try:
        version = state["version"]
        old = Topology.from_dict(state)
        epoch, position = int(state["epoch"]), int(state["position"])
        history = tuple(
            Segment(Topology.from_dict(h), int(h["position"])) for h in state["history"]
        )
        saved_split, saved_fingerprint, saved_seed = (
            state["split"],
            state["manifest_fingerprint"],
            state["seed"],
        )
        saved_exclude = state.get("exclude_digest")
    except (KeyError, TypeError, ValueError) as err:
        raise DataError(f"loader state is malformed ({err!r}): {state!r}") from None
    if version != STATE_VERSION:
        raise DataError(f"loader state version {version!r} is not {STATE_VERSION}")
    if saved_fingerprint != fingerprint or saved_split != split:
        raise DataError(
            f"loader state belongs to split {saved_split!r} with shard-list fingerprint "
            f"{saved_fingerprint}, but {where} split {split!r} has {fingerprint}; resume with "
            "the shard set the checkpoint was trained on"
        )
    if saved_seed != seed:
        raise DataError(
            f"loader state was written with seed {saved_seed}, this loader has seed {seed}; "
            "resume with the same train.seed"
        )
    if saved_exclude != exclude:
        raise DataError(
            f"loader state was written excluding samples {saved_exclude or '(none)'}, this run "
            f"excludes {exclude or '(none)'}; resume with the exclusion list the checkpoint was "
            "trained with (data.exclude), or start a new run"
        )
    if epoch < 0 or position < 0:
        raise DataError(f"loader state has a negative epoch or position: {state!r}")
    return LoaderState(split, fingerprint, seed, epoch, position, old, history, exclude)
