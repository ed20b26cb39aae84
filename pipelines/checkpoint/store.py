"""Where checkpoints live and where a process stages them.

Run storage (`<run dir>/checkpoints`) may be a local or shared path, or a URI. DeepSpeed writes
and reads local files only, so each rank works in a staging folder: the storage itself when it
is local (nothing moves), else a folder of its own in its node's scratch, from which it uploads
the files it wrote, and into which it downloads (verified against the commit marker) the files it
loads. Scratch may vanish between a stop and a resume: nothing is kept only there.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.checkpoint import files
from pipelines.checkpoint.files import Checkpoint
from pipelines.checkpoint.universal import CONVERTED, converted_files
from pipelines.layout import CHECKPOINTS_DIR, UNIVERSAL_DIR, checkpoint_tag
from pipelines.run_storage import RunDir
from pipelines.storage import Location
from pipelines.transfer import FileDigest, download_dir, upload_dir, upload_many


@dataclass(frozen=True)
class CheckpointStore:
    storage: Location  # <run storage>/checkpoints
    staging: Path  # where DeepSpeed writes and loads: the storage itself, or node scratch

    @classmethod
    def for_rank(cls, run: RunDir, rank: int) -> CheckpointStore:
        """Rank `rank`'s view: its staging folder is its own on scratch (ranks sharing a node
        never touch each other's files), or the storage itself when that is local."""
        if not run.remote:
            return cls(run.at(CHECKPOINTS_DIR), run.path(CHECKPOINTS_DIR))
        return cls(run.at(CHECKPOINTS_DIR), run.path(CHECKPOINTS_DIR, f"rank{rank:05d}"))

    @property
    def remote(self) -> bool:
        return not self.storage.is_local

    def folder(self, step: int) -> Path:
        """Where this process writes checkpoint `step`."""
        return self.staging / checkpoint_tag(step)

    def clear(self, step: int, *, storage: bool, staging: bool) -> None:
        """Before a save: no torn earlier attempt at `step` is left to mix with the new files."""
        if storage:
            files.prepare_folder(self.storage, step)
        if staging and self.remote:
            shutil.rmtree(self.folder(step), ignore_errors=True)

    def publish(self, step: int, names: list[str]) -> None:
        """Upload this rank's files of checkpoint `step` (verified); nothing when local."""
        if self.remote:
            folder, target = self.folder(step), self.storage.join(checkpoint_tag(step))
            upload_many([(folder / name, target.join(name)) for name in names])

    def commit(self, step: int, reports: list[dict[str, Any]], meta: dict[str, Any]) -> str:
        """Rank 0, once every rank stored its files: the marker, `latest`; returns the URI."""
        target = self.storage.join(checkpoint_tag(step))
        files.commit(target, step, reports, meta)
        return target.uri

    def unstage(self, step: int) -> None:
        """After a commit: the staged copy is no longer needed (only when staging is scratch)."""
        if self.remote:
            shutil.rmtree(self.folder(step), ignore_errors=True)

    def local(self, checkpoint: Checkpoint, names: list[str] | None) -> Checkpoint:
        """`checkpoint` as local files (those named, or all), downloaded where it is remote."""
        return files.local_copy(checkpoint, self.staging, names=names)

    def fetch_universal(self, tag: str) -> bool:
        """Bring a conversion stored beside the checkpoint into staging; whether there is one."""
        stored = self.storage.join(UNIVERSAL_DIR, tag)
        if not self.remote:
            return stored.join(CONVERTED).is_file()
        if not stored.join(CONVERTED).is_file():
            return False
        local = self.staging / UNIVERSAL_DIR / tag
        listed = converted_files(stored.join(CONVERTED).read_json())
        expect = {name: FileDigest(e["size"], e["sha256"]) for name, e in listed.items()}
        download_dir(stored, local, expect)
        (local / CONVERTED).write_bytes(stored.join(CONVERTED).read_bytes())
        return True

    def publish_universal(self, tag: str) -> None:
        """Store a conversion made in staging beside its checkpoint, for the other ranks."""
        if self.remote:
            upload_dir(self.staging / UNIVERSAL_DIR / tag, self.storage.join(UNIVERSAL_DIR, tag))
