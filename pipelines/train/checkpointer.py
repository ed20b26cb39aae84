"""The Checkpointer: the one owner of checkpoints. It decides when to save and where, which
checkpoint a run resumes from, whether that needs DeepSpeed's universal conversion (another
world size or ZeRO stage), whether the checkpoint's model is the one being trained, and it holds
the single copy of the run's progress (saved in the commit marker).

Which checkpoint: the driver chooses once, with every check (`choose_checkpoint`), before any
worker starts, and hands the choice and a launch id to the workers (`plan_launch`). When Ray
Train restarts the workers of the same launch (a failure, an elastic resize), they continue from
the newest checkpoint that launch committed instead (each marker records its launch id).

The stored format and commit protocol are in `pipelines.checkpoint.files`; where files are
staged and how they reach run storage (a local path, or a URI such as s3://) is
`pipelines.checkpoint.store`.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from pipelines.checkpoint import files
from pipelines.checkpoint import marker as markers
from pipelines.checkpoint.files import Checkpoint, check_loadable, checkpoints_root
from pipelines.checkpoint.rank_state import (
    rank_state_files,
    read_rank_state,
    rng_state,
    set_rng_state,
    write_rank_state,
)
from pipelines.checkpoint.store import CheckpointStore
from pipelines.checkpoint.universal import convert_to_universal, universal_location
from pipelines.config import StageConfig
from pipelines.config.model import architecture_changes
from pipelines.distributed import DistContext
from pipelines.errors import CheckpointError
from pipelines.layout import checkpoint_tag
from pipelines.seeds import rank_seed, resharded_rank_seed
from pipelines.storage import Location
from pipelines.train import model_init
from pipelines.train.distill import TeacherIdentity, check_same_teacher, teacher_identity
from pipelines.train.request import TrainRequest
from vit_core import ViTConfig

log = logging.getLogger(__name__)
_MB = 2**20


@dataclass
class Progress:
    """How far training is. One live copy (the Trainer's), saved in the commit marker only."""

    step: int = 0
    epoch: int = 0
    samples_seen: int = 0
    samples_per_source: dict[str, int] = field(default_factory=dict)  # a mix's sources


def select_checkpoint(root: Location | Path | str, resume: str) -> Checkpoint | None:
    """The checkpoint `--resume` asks for: `auto` the newest committed one under `root` (None
    when there is none), `never` none (an error when `root` already holds one, so nothing is
    overwritten), else the given path or URI."""
    if resume == "never":
        if files.list_checkpoints(root, warn=False):
            raise CheckpointError(
                f"{root} already holds committed checkpoints; use --resume auto to continue the "
                "run, or a new --run-dir to start over (nothing was deleted)"
            )
        return None
    if resume == "auto":
        return files.latest_checkpoint(root)
    return files.open_checkpoint(resume)


def check_same_model(found: Checkpoint, model: ViTConfig) -> None:
    """Resuming is only for the same architecture (regularisation or grad checkpointing may
    change; shapes and forward may not)."""
    saved = found.meta.get("vit_config")
    diff = architecture_changes(saved, model) if saved is not None else []
    if diff:
        raise CheckpointError(
            f"checkpoint {found.uri} was trained with a different model ({', '.join(diff)}); "
            "restore the model section, or start a new run with --run-dir or --resume never"
        )


def choose_checkpoint(request: TrainRequest) -> Checkpoint | None:
    """The checkpoint a launch resumes from, chosen once with every check, so that a wrong one
    fails before anything starts: what `--resume` asks for, refused unless it holds the model
    being trained, was trained with the same teacher (or none), and its files match their
    marker and none could run code."""
    found = select_checkpoint(checkpoints_root(request.run_dir), request.resume)
    if found is None:
        return None
    config = request.config
    check_same_model(found, model_init.architecture(request, model_init.num_classes(config)))
    check_same_teacher(found.meta.get("teacher"), _teacher_identity(config))
    check_loadable(found)  # the slowest check last: it hashes every file
    return found


def plan_launch(request: TrainRequest) -> tuple[TrainRequest, Checkpoint | None]:
    """The driver's side, before any worker starts: the request the workers get, with a new
    launch id and the checkpoint chosen (`choose_checkpoint`); and that checkpoint."""
    found = choose_checkpoint(request)
    chosen = found.uri if found is not None else None
    planned = dataclasses.replace(request, launch_id=uuid.uuid4().hex, resume_from=chosen)
    return planned, found


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
        self.store = CheckpointStore.for_rank(request.files(ctx.node_id), ctx.rank)
        self._config: StageConfig = request.config
        self._teacher = _teacher_identity(request.config)
        self.launch_id, self.resume_from = self._resume_point()
        self._meta = self._static_meta(architecture, classes)
        self.load_universal = self.resume_from is not None and self._needs_universal(
            self.resume_from
        )
        self._local: Checkpoint | None = None  # the resume point as files this rank loads
        if self.resume_from is not None:
            self._local = self._prepare_resume(self.resume_from)
        self.last_saved: str | None = self.resume_from.uri if self.resume_from else None
        self._rank_bytes = self._estimated_bytes(architecture)
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
        found, local = self.resume_from, self._local
        if found is None or local is None:
            torch.manual_seed(rank_seed(self._config.train.seed, self.ctx.rank))
            self._progress = Progress()
            return self._progress
        if self.load_universal:
            engine.load(*universal_location(local))
        else:
            engine.load(local.root, local.tag, origin=local.origin)
        meta = found.meta
        loader_state, rng = read_rank_state(local.path, self._state_rank(found))
        loader.load_state_dict(loader_state)
        # The epoch is the loader's, not the marker's: a checkpoint at the end of an epoch holds
        # the loader at the start of the next one, which is where reading continues.
        per_source = {str(k): int(v) for k, v in meta.get("samples_per_source", {}).items()}
        self._progress = Progress(
            found.step, loader.epoch, int(meta.get("samples_seen", 0)), per_source
        )
        if self._state_rank(found) == self.ctx.rank:
            set_rng_state(rng)
        else:
            seed = int(meta.get("seed", 0))
            torch.manual_seed(resharded_rank_seed(seed, self.ctx.rank, found.step))
        return self._progress

    def due(self, step: int, *, force: bool = False) -> bool:
        """Whether `maybe_save(step, force=force)` saves: at every `checkpoint.every_n_steps`,
        or when forced."""
        every = self._config.checkpoint.every_n_steps
        return force or bool(every and step % every == 0)

    def maybe_save(self, step: int, *, force: bool = False) -> str | None:
        """Save at every `checkpoint.every_n_steps`, or now when `force`; all ranks call it.
        Returns the committed checkpoint's path or URI."""
        if not self.due(step, force=force):
            return None
        assert self._progress is not None and self._progress.step == step, "restore() first"
        self.last_saved = self._save()
        return self.last_saved

    def _save(self) -> str:
        """Every rank writes (and, to remote storage, uploads) its part and reports its files;
        rank 0 commits once all reported. A rank that fails raises at once: a collective the
        others are not in would hang the job, and its launcher stops the others instead."""
        ctx, step = self.ctx, self._progress.step
        self._check_space(step)
        self.store.clear(step, storage=ctx.is_main, staging=True)
        ctx.barrier()
        folder = self.store.folder(step)
        try:
            names = self._engine.save(self.store.staging, folder.name)
            loader_state = self._loader.state_dict()
            written = write_rank_state(folder, ctx.rank, loader_state, rng_state())
            names += [p.name for p in written]
            report = markers.report(folder, names)
            self.store.publish(step, names)
        except OSError as err:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise CheckpointError(
                f"rank {ctx.rank} could not write checkpoint {checkpoint_tag(step)}: {reason}"
            ) from None
        self._rank_bytes = sum(entry["size"] for entry in report.values())
        reports = ctx.all_gather_object(report)
        uri = None
        if ctx.is_main:
            uri = self.store.commit(step, reports, {**self._meta, **asdict(self._progress)})
            files.prune(self.store.storage, self._config.checkpoint.keep_last)
        uri = ctx.broadcast_object(uri)
        self.store.unstage(step)
        return uri

    def _check_space(self, step: int) -> None:
        """Every rank checks room for what it is about to write (its last checkpoint's bytes,
        or an estimate); all fail together, before anything is written, when one is short."""
        folder = self.store.folder(step)
        free = shutil.disk_usage(_existing(folder)).free
        need = int(self._rank_bytes * 1.1) + _MB
        short = self.ctx.all_gather_object((self.ctx.rank, need, free, str(folder.parent)))
        worst = [s for s in short if s[1] > s[2]]
        if worst:
            rank, need, free, where = worst[0]
            raise CheckpointError(
                f"no space left for checkpoint {checkpoint_tag(step)}: rank {rank} needs about "
                f"{need / _MB:.1f} MB in {where}, {free / _MB:.1f} MB free (the last committed "
                "checkpoint is kept; free space, then resume with --resume auto)"
            )

    def _resume_point(self) -> tuple[str, Checkpoint | None]:
        """This launch's id and the checkpoint it continues from. Rank 0 decides (under torchrun
        the other ranks have no driver's choice) and every rank gets its answer: the newest
        checkpoint this launch committed, when Ray Train restarted its workers (it passed the
        checks as it was written, and `--resume never` meant "before this launch"); else the
        driver's choice (`choose_checkpoint`), which opens here without choosing again."""

        def decide() -> tuple[str, str | None]:
            launch_id = self.request.launch_id
            assert launch_id is not None, "the driver plans the launch first (plan_launch)"
            own = _newest_of_launch(self.store.storage, launch_id)
            if own is not None:
                log.info("restarted: continuing from %s, saved by this launch", own.uri)
                return launch_id, own.uri
            return launch_id, self.request.resume_from

        main = self.ctx.is_main
        launch_id, chosen = self.ctx.broadcast_object(decide() if main else None)
        return launch_id, files.open_checkpoint(chosen) if chosen is not None else None

    def _prepare_resume(self, found: Checkpoint) -> Checkpoint:
        """The files this rank loads, local (downloaded from remote storage); for another world
        size or ZeRO stage, rank 0 converts to DeepSpeed's universal form once and stores it
        beside the checkpoint for the others."""
        ctx = self.ctx
        if not self.load_universal:
            return self.store.local(found, files.files_for_rank(found, ctx.rank))
        if ctx.is_main:
            full = self.store.local(found, None)
            self.store.fetch_universal(found.tag)  # an earlier conversion, reused if intact
            convert_to_universal(full)
            self.store.publish_universal(found.tag)
        ctx.barrier()
        if not ctx.is_main:
            self.store.fetch_universal(found.tag)
        return self.store.local(found, list(rank_state_files(0)) + _legacy_state(found))

    def _state_rank(self, found: Checkpoint) -> int:
        """Whose loader and RNG state this rank continues: its own on the same topology; else
        rank 0's loader position (the loader re-splits the epoch) and a fresh RNG."""
        return self.ctx.rank if found.world_size == self.ctx.world_size else 0

    def _needs_universal(self, found: Checkpoint) -> bool:
        stage = self._config.deepspeed.zero_stage
        saved_stage = int(found.meta.get("zero_stage", stage))
        if saved_stage == 0 and stage == 0:
            return False  # unpartitioned: loads on any number of workers as it is
        return found.world_size != self.ctx.world_size or saved_stage != stage

    def _estimated_bytes(self, architecture: ViTConfig) -> int:
        """This rank's share of a checkpoint before one was written: fp32 weights (rank 0, or
        each rank's shard at ZeRO-3) plus Adam's fp32 master and two moments per parameter,
        partitioned at ZeRO >= 1."""
        from vit_core import VisionTransformer

        with torch.device("meta"):
            params = sum(p.numel() for p in VisionTransformer(architecture).parameters())
        stage, world = self._config.deepspeed.zero_stage, self.ctx.world_size
        optim = 12 * params if stage == 0 else 12 * params // world
        weights = (4 * params // world) if stage == 3 else (4 * params if self.ctx.is_main else 0)
        return optim * (self.ctx.is_main or stage > 0) + weights

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
            "launch_id": self.launch_id,
            "preprocess": {
                "img_size": architecture.img_size,
                "mean": list(config.augment.mean),
                "std": list(config.augment.std),
                "crop_pct": config.augment.eval_crop_pct,
            },
        }


def _teacher_identity(config: StageConfig) -> TeacherIdentity | None:
    return teacher_identity(config.distill) if config.distill is not None else None


def _newest_of_launch(root: Location, launch_id: str) -> Checkpoint | None:
    """The newest intact checkpoint under `root` that launch `launch_id` committed."""
    own = [
        c for c in files.list_checkpoints(root, warn=False) if c.meta.get("launch_id") == launch_id
    ]
    return own[-1] if own else None


def _legacy_state(found: Checkpoint) -> list[str]:
    """vitpipe 0.1 wrote rank 0's state as one pickled `.pt` (read through the vetted loader)."""
    return [name for name in found.files if name == "vitpipe_rank00000.pt"]


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path
