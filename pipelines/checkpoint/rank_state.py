"""Each rank's own part of a checkpoint (loader position, RNG states), in files that cannot
carry code: `vitpipe_rankNNNNN.json` (the loader state and every scalar) next to
`vitpipe_rankNNNNN.safetensors` (the RNG state arrays). vitpipe 0.1 wrote one pickled
`vitpipe_rankNNNNN.pt` per rank instead; `read_rank_state` still reads it, through the vetted
weights-only loader.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipelines.checkpoint.safe_load import safe_load
from pipelines.errors import CheckpointError
from pipelines.storage import temp_sibling

FORMAT = "vitpipe-rank-state"
VERSION = 2
_LEGACY_NAME = re.compile(r"vitpipe_rank(\d{5})\.pt")


def json_name(rank: int) -> str:
    return f"vitpipe_rank{rank:05d}.json"


def tensors_name(rank: int) -> str:
    return f"vitpipe_rank{rank:05d}.safetensors"


def legacy_name(rank: int) -> str:
    """vitpipe 0.1's pickled rank state."""
    return f"vitpipe_rank{rank:05d}.pt"


def legacy_rank(name: str) -> int | None:
    """The rank whose 0.1 state `name` holds, or None when it is not one."""
    match = _LEGACY_NAME.fullmatch(name)
    return int(match.group(1)) if match else None


def rank_state_files(rank: int) -> tuple[str, str]:
    """What `write_rank_state` writes for `rank`, in the order it writes them."""
    return tensors_name(rank), json_name(rank)


@dataclass(frozen=True)
class RngState:
    """Every random stream a training process draws from."""

    python: tuple[Any, ...]  # random.getstate(): (version, 625 ints, gauss_next)
    numpy: tuple[Any, ...]  # np.random.get_state(): ('MT19937', uint32[624], pos, has_gauss, g)
    torch: torch.Tensor  # torch.get_rng_state(), uint8
    cuda: tuple[torch.Tensor, ...] = ()  # torch.cuda.get_rng_state_all(), where initialised

    @classmethod
    def from_legacy(cls, state: Mapping[str, Any]) -> RngState:
        """vitpipe 0.1's dict of the same streams (python/numpy/torch/cuda keys)."""
        return cls(
            tuple(state["python"]),
            tuple(state["numpy"]),
            state["torch"],
            tuple(state.get("cuda", ())),
        )


def rng_state() -> RngState:
    cuda: tuple[torch.Tensor, ...] = ()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda = tuple(torch.cuda.get_rng_state_all())
    return RngState(random.getstate(), np.random.get_state(), torch.get_rng_state(), cuda)


def set_rng_state(state: RngState | Mapping[str, Any]) -> None:
    """Restore every stream; also takes vitpipe 0.1's dict (python/numpy/torch/cuda keys)."""
    if isinstance(state, Mapping):
        state = RngState.from_legacy(state)
    random.setstate(state.python)
    np.random.set_state(state.numpy)
    torch.set_rng_state(state.torch)
    if state.cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state.cuda))


def write_rank_state(
    folder: Path, rank: int, loader_state: Mapping[str, Any], rng: RngState
) -> list[Path]:
    """Write `rank`'s state into `folder` (each file atomically); returns the paths written."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    version, internal, gauss_next = rng.python
    bit_generator, keys, pos, has_gauss, cached_gaussian = rng.numpy
    tensors = {
        "python": torch.tensor(list(internal), dtype=torch.int64),
        "numpy": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "torch": rng.torch.detach().cpu().contiguous(),
        **{f"cuda.{i}": t.detach().cpu().contiguous() for i, t in enumerate(rng.cuda)},
    }
    scalars = {
        "format": FORMAT,
        "version": VERSION,
        "rank": rank,
        "loader": dict(loader_state),
        "python_rng": {"version": version, "gauss_next": gauss_next},
        "numpy_rng": {
            "bit_generator": bit_generator,
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "num_cuda": len(rng.cuda),
    }
    text = json.dumps(scalars, indent=1, sort_keys=True)  # fails here, not at load, if not JSON
    tensors_path, json_path = (folder / name for name in rank_state_files(rank))
    tmp = temp_sibling(tensors_path)
    save_file(tensors, str(tmp))
    os.replace(tmp, tensors_path)
    tmp = temp_sibling(json_path)
    tmp.write_text(text)
    os.replace(tmp, json_path)
    return [tensors_path, json_path]


def read_rank_state(folder: Path, rank: int) -> tuple[dict[str, Any], RngState]:
    """(loader state, RNG state) of `rank`, from this format or vitpipe 0.1's `.pt`."""
    folder = Path(folder)
    if (folder / json_name(rank)).is_file():
        return _read_current(folder, rank)
    legacy = folder / legacy_name(rank)
    if legacy.is_file():
        return _read_legacy(legacy)
    raise CheckpointError(f"checkpoint {folder} has no state for rank {rank} ({json_name(rank)})")


def _read_current(folder: Path, rank: int) -> tuple[dict[str, Any], RngState]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    json_path, tensors_path = folder / json_name(rank), folder / tensors_name(rank)
    try:
        scalars = json.loads(json_path.read_text())
        if scalars.get("format") != FORMAT or scalars.get("version") != VERSION:
            raise ValueError(f"not {FORMAT} version {VERSION}")
        tensors = load_file(str(tensors_path))
        py, npy = scalars["python_rng"], scalars["numpy_rng"]
        python = (
            int(py["version"]),
            tuple(int(v) for v in tensors["python"].tolist()),
            None if py["gauss_next"] is None else float(py["gauss_next"]),
        )
        numpy_state = (
            str(npy["bit_generator"]),
            tensors["numpy"].numpy().astype(np.uint32),
            int(npy["pos"]),
            int(npy["has_gauss"]),
            float(npy["cached_gaussian"]),
        )
        cuda = tuple(tensors[f"cuda.{i}"] for i in range(int(scalars["num_cuda"])))
        rng = RngState(python, numpy_state, tensors["torch"], cuda)
        loader = scalars["loader"]
        if not isinstance(loader, dict):
            raise ValueError("the loader state is not a mapping")
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as err:
        raise CheckpointError(
            f"rank state {json_path} (with {tensors_path.name}) is unreadable: {err}"
        ) from None
    return loader, rng


def _read_legacy(path: Path) -> tuple[dict[str, Any], RngState]:
    state = safe_load(path)
    try:
        return dict(state["loader"]), RngState.from_legacy(state["rng"])
    except (KeyError, TypeError) as err:
        raise CheckpointError(f"rank state {path} is malformed: {err!r}") from None
