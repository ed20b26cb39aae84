"""Resuming on a different number of workers: convert a sharded ZeRO checkpoint to DeepSpeed's
universal format once (on rank 0), then every rank loads it with `load_universal`."""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
from pathlib import Path

from pipelines.layout import UNIVERSAL_DIR
from pipelines.train.checkpoint_files import Checkpoint

_DONE = "CONVERTED"


def universal_location(checkpoint: Checkpoint) -> tuple[Path, str]:
    """(load_dir, tag) for `engine.load` of the converted checkpoint."""
    return checkpoint.root / UNIVERSAL_DIR, checkpoint.tag


def convert_to_universal(checkpoint: Checkpoint) -> Path:
    """Idempotent: a finished conversion is reused; a torn one is redone from scratch."""
    from deepspeed.checkpoint import ds_to_universal

    load_dir, tag = universal_location(checkpoint)
    out = load_dir / tag
    if (out / _DONE).is_file():
        return out
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
    with contextlib.redirect_stdout(io.StringIO()):
        ds_to_universal.main(args)
    (tmp / _DONE).write_text(checkpoint.tag + "\n")
    tmp.rename(out)
    return out
