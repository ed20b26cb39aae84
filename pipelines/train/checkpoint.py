"""The Checkpointer: the one owner of checkpoints. It decides when to save and where, which
checkpoint a run resumes from, whether that needs DeepSpeed's universal conversion (another
world size or ZeRO stage), whether the checkpoint's model is the one being trained, and it holds
the single copy of the run's progress (saved in the commit marker).

The folder format and commit protocol are in `checkpoint_files`.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from pipelines.config import JobConfig
from pipelines.config.model import architecture_changes
from pipelines.distributed import DistContext
from pipelines.errors import CheckpointError
from pipelines.layout import checkpoint_tag
from pipelines.seeds import rank_seed, resharded_rank_seed
from pipelines.train import checkpoint_files as files
from pipelines.train import marker as markers
from pipelines.train.checkpoint_files import Checkpoint
from pipelines.train.distill import check_same_teacher, teacher_identity
from pipelines.train.rank_state import read_rank_state, rng_state, set_rng_state, write_rank_state
from pipelines.train.request import TrainRequest
from pipelines.train.universal import convert_to_universal, universal_location
from vit_core import ViTConfig

log = logging.getLogger(__name__)


@dataclass
class Progress:
    """How far training is. One live copy (the Trainer's), saved in the commit marker only."""

    step: int = 0
    epoch: int = 0
    samples_seen: int = 0


def select_checkpoint(root: Path, resume: str) -> Checkpoint | None:
    """The checkpoint `--resume` asks for: `auto` the newest committed one under `root` (None
    when there is none), `never` none (an error when `root` already holds one, so nothing is
    overwritten), else the given path."""
    if resume == "never":
        if files.list_checkpoints(root, warn=False):
            raise CheckpointError(
                f"{root.parent} already holds committed checkpoints; use --resume auto to "
                "continue it, or a new --run-dir to start over (nothing was deleted)"
            )
        return None
    if resume == "auto":
        return files.latest_checkpoint(root)
    return files.open_checkpoint(Path(resume))


def check_same_model(found: Checkpoint, architecture: ViTConfig) -> None:
    """Resuming is only for the same architecture (regularisation or grad checkpointing may
    change; shapes and forward may not)."""
    saved = found.meta.get("vit_config")
    diff = architecture_changes(saved, architecture) if saved is not None else []
    if diff:
        raise CheckpointError(
            f"checkpoint {found.path} was trained with a different model ({', '.join(diff)}); "
            "restore the model section, or start a new run with --run-dir or --resume never"
        )


class Checkpointer:
    """Built on every rank before the engine (which must know whether it loads a universal
    checkpoint); `restore` then binds the engine and loader whose state `maybe_save` saves."""

    def __init__(
        self,
        request: TrainRequest,
        ctx: DistContext,
        *,
        architecture: ViTConfig,
        classes: list[str] | None,
    ):
        self.request = request
        self.ctx = ctx
        self.root = request.checkpoint_root
        self._config: JobConfig = request.config
        distill = request.config.distill
        self._teacher = teacher_identity(distill) if distill is not None else None
        self._meta = self._static_meta(architecture, classes)
        self.resume_from = self._choose(architecture)
        self.load_universal = self.resume_from is not None and self._needs_universal(
            self.resume_from
        )
        if self.load_universal:
            ctx.on_main(lambda: convert_to_universal(self.resume_from))
            ctx.barrier()
        self.last_saved: Path | None = self.resume_from.path if self.resume_from else None
        self._engine: Any = None
        self._loader: Any = None
        self._progress: Progress | None = None

    @property
    def resumed_step(self) -> int | None:
        return self.resume_from.step if self.resume_from is not None else None

    def restore(self, engine: Any, loader: Any) -> Progress:
        """Load the chosen checkpoint into `engine` and `loader` and return the progress it
        holds (the live copy from now on); a fresh start seeds this rank's RNG instead."""
        self._engine, self._loader = engine, loader
        found = self.resume_from
        seed = self._config.train.seed
        if found is None:
            torch.manual_seed(rank_seed(seed, self.ctx.rank))
            self._progress = Progress()
            return self._progress
        load_dir, tag = (
            universal_location(found) if self.load_universal else (found.root, found.tag)
        )
        engine.load(load_dir, tag)
        meta = found.meta
        self._progress = Progress(
            found.step, int(meta.get("epoch", 0)), int(meta.get("samples_seen", 0))
        )
        same_topology = found.world_size == self.ctx.world_size
        loader_state, rng = read_rank_state(found.path, self.ctx.rank if same_topology else 0)
        loader.load_state_dict(loader_state)
        if same_topology:
            set_rng_state(rng)
        else:
            torch.manual_seed(
                resharded_rank_seed(int(meta.get("seed", 0)), self.ctx.rank, found.step)
            )
        return self._progress

    def maybe_save(self, step: int, *, force: bool = False) -> Path | None:
        """Save at every `checkpoint.every_n_steps`, or now when `force`; all ranks call it."""
        every = self._config.checkpoint.every_n_steps
        if not force and not (every and step % every == 0):
            return None
        assert self._progress is not None and self._progress.step == step, "restore() first"
        self.last_saved = self._save()
        return self.last_saved

    def _save(self) -> Path:
        """All ranks write their part; rank 0 commits only once every rank succeeded."""
        ctx, progress = self.ctx, self._progress
        path = self.root / checkpoint_tag(progress.step)
        if ctx.is_main:
            files.prepare_folder(self.root, progress.step)
        ctx.barrier()
        try:
            names = self._engine.save(self.root, path.name)
            loader_state = self._loader.state_dict()
            names += [p.name for p in write_rank_state(path, ctx.rank, loader_state, rng_state())]
            report = markers.report(path, names)
        except OSError as err:
            # DeepSpeed's save left the other ranks in collectives this rank cannot match now:
            # fail at once; the launcher (Ray Train, torchrun) then stops the other ranks.
            raise CheckpointError(
                f"rank {ctx.rank} could not write checkpoint {path}: {err}"
            ) from None
        reports = ctx.all_gather_object(report)
        if ctx.is_main:
            files.commit(path, progress.step, reports, {**self._meta, **asdict(progress)})
            files.prune(self.root, self._config.checkpoint.keep_last)
        ctx.barrier()
        return path

    def _choose(self, architecture: ViTConfig) -> Checkpoint | None:
        """Rank 0 decides (it alone warns about torn folders); every rank gets its answer."""

        def decide() -> str | None:
            found = select_checkpoint(self.root, self.request.resume)
            return str(found.path) if found else None

        chosen = self.ctx.broadcast_object(self.ctx.on_main(decide) if self.ctx.is_main else None)
        if chosen is None:
            return None
        found = files.open_checkpoint(Path(chosen))
        check_same_model(found, architecture)
        check_same_teacher(found.meta.get("teacher"), self._teacher)
        return found

    def _needs_universal(self, found: Checkpoint) -> bool:
        stage = self._config.deepspeed.zero_stage
        saved_stage = int(found.meta.get("zero_stage", stage))
        if saved_stage == 0 and stage == 0:
            return False  # unpartitioned: loads on any number of workers as it is
        return found.world_size != self.ctx.world_size or saved_stage != stage

    def _static_meta(self, architecture: ViTConfig, classes: list[str] | None) -> dict[str, Any]:
        config, request = self._config, self.request
        tracking = request.tracking
        return {
            "stage": request.stage,
            "world_size": self.ctx.world_size,
            "zero_stage": config.deepspeed.zero_stage,
            "precision": config.deepspeed.precision,
            "seed": config.train.seed,
            "model_section": config.model.model_dump(mode="json"),
            "vit_config": architecture.to_dict(),
            "num_classes": architecture.num_classes,
            "classes": classes,
            "config_fingerprint": config.fingerprint(),
            "model_fingerprint": config.fingerprint("model"),
            "mlflow_run_id": tracking.run_id if tracking else None,
            "mlflow_tracking_uri": tracking.uri if tracking else None,
            "init_from": request.init_from,
            "teacher": self._teacher.to_dict() if self._teacher else None,
            "preprocess": {
                "img_size": architecture.img_size,
                "mean": list(config.augment.mean),
                "std": list(config.augment.std),
                "crop_pct": config.augment.eval_crop_pct,
            },
        }
