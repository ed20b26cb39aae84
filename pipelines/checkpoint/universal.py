"""Resuming on a different number of workers: convert a sharded ZeRO checkpoint to DeepSpeed's
universal format once (on rank 0), then every rank loads it with `load_universal`.

DeepSpeed unpickles both the source files (conversion) and the converted ones (loading), so the
source is vetted before conversion (`safe_load.vet_folder`), conversion runs with weights-only
loads forced, and the `CONVERTED` file records the size and sha256 of every file written. A
conversion is reused only while its files still match `CONVERTED`; `engine.load` vets them again.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import shutil
from pathlib import Path

from pipelines.checkpoint import marker as markers
from pipelines.checkpoint.files import Checkpoint
from pipelines.checkpoint.safe_load import vet_folder, weights_only_loads
from pipelines.layout import UNIVERSAL_DIR

log = logging.getLogger(__name__)

CONVERTED = "CONVERTED"  # the conversion's own marker: every file with its size and sha256
_FORMAT = "vitpipe-universal"


def universal_location(checkpoint: Checkpoint) -> tuple[Path, str]:
    """(load_dir, tag) for `engine.load` of the converted checkpoint."""
    return checkpoint.root / UNIVERSAL_DIR, checkpoint.tag


def convert_to_universal(checkpoint: Checkpoint) -> Path:
    """Idempotent: a finished, intact conversion is reused; a torn or changed one is redone."""
    from deepspeed.checkpoint import ds_to_universal

    load_dir, tag = universal_location(checkpoint)
    out = load_dir / tag
    if (out / CONVERTED).is_file():
        problem = converted_problem(out, checkpoint.tag)
        if problem is None:
            return out
        log.warning("redoing the universal conversion %s: %s", out, problem)
    vet_folder(checkpoint.path, origin=checkpoint.origin)
    tmp = load_dir / f".{tag}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    tmp.mkdir(parents=True)
    args = argparse.Namespace(
        input_folder=str(checkpoint.path),
        output_folder=str(tmp),
        num_extract_workers=1,
        num_merge_workers=1,
        keep_temp_folder=False,
        strict=True,
        inject_missing_state=False,
    )
    with contextlib.redirect_stdout(io.StringIO()), weights_only_loads():
        ds_to_universal.main(args)
    files = {
        p.relative_to(tmp).as_posix(): markers.digest(p)
        for p in sorted(tmp.rglob("*"))
        if p.is_file()
    }
    done = {"format": _FORMAT, "tag": checkpoint.tag, "files": files}
    (tmp / CONVERTED).write_text(json.dumps(done, indent=1, sort_keys=True))
    tmp.rename(out)
    return out


def converted_files(done: dict) -> dict[str, dict]:
    """{name: {size, sha256}} of a conversion's files, from its CONVERTED content."""
    return dict(done["files"])


def converted_problem(out: Path, tag: str) -> str | None:
    """Why the conversion in `out` cannot be reused, or None: its `CONVERTED` file must list
    every file with the size and sha256 they still have, and no torch file may run code."""
    try:
        done = json.loads((out / CONVERTED).read_text())
        files = done["files"]
        if done.get("format") != _FORMAT or done.get("tag") != tag or not files:
            return "its CONVERTED file is from another version or checkpoint"
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return "its CONVERTED file lists no hashes (an earlier vitpipe wrote it)"
    present = {
        p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.name != CONVERTED
    }
    if present != set(files):
        return "its files differ from those listed in CONVERTED"
    for name, entry in files.items():
        if markers.digest(out / name) != {"size": entry.get("size"), "sha256": entry.get("sha256")}:
            return f"{name} changed since conversion"
    return None
