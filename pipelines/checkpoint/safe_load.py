"""Reading torch checkpoint files without running code from them.

A `torch.save` file is a zip holding a pickle, and unpickling may call any importable function
named in it. So before anything unpickles a checkpoint file (our own readers, or DeepSpeed's
loaders, which call `torch.load(weights_only=False)`), `vet_file` checks it statically:

- it must be a zip-format torch file (the legacy raw-pickle format is refused);
- every global its pickle names (`torch.serialization.get_unsafe_globals_in_checkpoint`, which
  disassembles the pickle without running it and refuses opcodes it does not know) must be one
  torch allows for `weights_only` loads or one in `ALLOWED_GLOBALS` below.

`safe_load` then loads with `weights_only=True`; `weights_only_loads()` forces that mode on every
`torch.load` in the process while DeepSpeed reads a checkpoint, so a file swapped after vetting
is still read by the restricted unpickler. Refusals are one-line `CheckpointError`s naming the
file. A file the allowlist refuses but the user trusts is converted once by
`vitpipe checkpoint upgrade PATH` (which runs code from it).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pickle
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from pipelines.errors import CheckpointError

# Globals outside torch's own weights_only allowlist that checkpoints we read legitimately hold:
# name in the pickle -> the modules that may define it (first importable wins) and its attribute.
ALLOWED_GLOBALS: dict[str, tuple[tuple[str, ...], str]] = {
    # DeepSpeed 0.19.8 ZeRO-1/2/3 optimizer files (fp32, bf16, fp16) and the universal
    # checkpoint's optimizer_state.pt: the loss scaler, the stage enum, fragment addresses.
    "deepspeed.runtime.fp16.loss_scaler.LossScaler": (
        ("deepspeed.runtime.fp16.loss_scaler",),
        "LossScaler",
    ),
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler": (
        ("deepspeed.runtime.fp16.loss_scaler",),
        "DynamicLossScaler",
    ),
    "deepspeed.runtime.zero.config.ZeroStageEnum": (
        ("deepspeed.runtime.zero.config",),
        "ZeroStageEnum",
    ),
    "deepspeed.utils.tensor_fragment.fragment_address": (
        ("deepspeed.utils.tensor_fragment",),
        "fragment_address",
    ),
    # vitpipe 0.1 `vitpipe_rank*.pt`: numpy's RNG state (a uint32 array), named as numpy 2 and
    # numpy 1 write it.
    "numpy._core.multiarray._reconstruct": (
        ("numpy._core.multiarray", "numpy.core.multiarray"),
        "_reconstruct",
    ),
    "numpy.core.multiarray._reconstruct": (
        ("numpy._core.multiarray", "numpy.core.multiarray"),
        "_reconstruct",
    ),
    "numpy.ndarray": (("numpy",), "ndarray"),
    "numpy.dtype": (("numpy",), "dtype"),
    "numpy.dtypes.UInt32DType": (("numpy.dtypes",), "UInt32DType"),
}

_FORCE_ON = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
_FORCE_OFF = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"


def upgrade_hint(shown: Path | str) -> str:
    return (
        f"if you trust it, rewrite it once in the safe format with `vitpipe checkpoint upgrade "
        f"{shown}` (that runs code from the file)"
    )


def globals_in(path: Path, *, shown_as: str | None = None) -> list[str]:
    """The globals `path`'s pickle names beyond torch's own weights_only allowlist, found without
    running it; CheckpointError when it is not a zip-format torch file or cannot be disassembled.
    `shown_as`: what errors call the file (its URI, where `path` is a local copy)."""
    path = Path(path)
    shown = shown_as or str(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {shown} is missing")
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != b"PK\x03\x04" or not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"refused to load {shown}: not a zip-format torch file (a legacy pickle can run code "
            f"when loaded); {upgrade_hint(shown)}"
        )
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except (pickle.UnpicklingError, ValueError, RuntimeError, EOFError, KeyError) as err:
        raise CheckpointError(
            f"refused to load {shown}: its pickle cannot be checked without running it "
            f"({_first_line(err)}); {upgrade_hint(shown)}"
        ) from None
    return sorted(found)


def vet_file(path: Path, *, shown_as: str | None = None) -> list[str]:
    """Refuse `path` unless it can be unpickled without running code; returns the allowlisted
    globals it names (what `safe_load` must allow). `shown_as`: as for `globals_in`."""
    path = Path(path)
    shown = shown_as or str(path)
    found = globals_in(path, shown_as=shown)
    bad = [g for g in found if g not in ALLOWED_GLOBALS]
    if bad:
        names = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise CheckpointError(
            f"refused to load {shown}: it names {names}, outside the checkpoint allowlist "
            f"(loading it could run code); {upgrade_hint(shown)}"
        )
    return found


def vet_folder(folder: Path, *, pattern: str = "*.pt", origin: str | None = None) -> list[Path]:
    """Vet every torch file under `folder` (recursively) before anything unpickles one.
    `origin`: the storage URI `folder` is a local copy of; refusals name the file there, which
    is what the user has (and what `vitpipe checkpoint upgrade` takes)."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob(pattern) if p.is_file())
    for file in files:
        shown = None
        if origin is not None:
            base, sep, query = origin.partition("?")  # s3://b/p?endpoint_override=...
            shown = f"{base.rstrip('/')}/{file.relative_to(folder).as_posix()}{sep}{query}"
        vet_file(file, shown_as=shown)
    return files


def resolve(names: Iterable[str] = ALLOWED_GLOBALS) -> list[tuple[Any, str]]:
    """(object, pickle name) pairs for `torch.serialization.safe_globals`; a name whose module is
    not installed is left out (a file naming it is then refused by the loader)."""
    pairs = []
    for name in names:
        modules, attr = ALLOWED_GLOBALS[name]
        for module_name in modules:
            try:
                pairs.append((getattr(importlib.import_module(module_name), attr), name))
                break
            except (ImportError, AttributeError):
                continue
    return pairs


def safe_load(path: Path, *, map_location: str | torch.device = "cpu") -> Any:
    """`torch.load(path, weights_only=True)` after `vet_file`, with the allowlist in force."""
    path = Path(path)
    needed = vet_file(path)
    # Types a pickle builds without naming them (numpy's dtype classes) come with their package.
    packages = {name.split(".")[0] for name in needed}
    allowed = [name for name in ALLOWED_GLOBALS if name.split(".")[0] in packages]
    try:
        with torch.serialization.safe_globals(resolve(allowed)):
            return torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError) as err:
        raise CheckpointError(
            f"refused to load {path}: the weights-only loader rejected it ({_first_line(err)})"
        ) from None


@contextlib.contextmanager
def weights_only_loads() -> Iterator[None]:
    """Every `torch.load` in this process (DeepSpeed's too) runs weights-only with the allowlist
    until the block ends. Vet the files first: this turns a race into a refusal, not a message."""
    saved = {name: os.environ.get(name) for name in (_FORCE_ON, _FORCE_OFF)}
    os.environ[_FORCE_ON] = "1"
    os.environ.pop(_FORCE_OFF, None)
    try:
        with torch.serialization.safe_globals(resolve()):
            yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _first_line(err: BaseException) -> str:
    """The informative line of an error: for torch's weights-only refusal, the unpickler's own
    reason rather than its boilerplate."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    for i, line in enumerate(lines):
        if "WeightsUnpickler error" in line:
            rest = line.split("WeightsUnpickler error:", 1)[-1].strip()
            return (rest or (lines[i + 1] if i + 1 < len(lines) else line))[:200]
    return lines[0][:200]
