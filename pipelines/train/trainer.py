"""The Trainer every training process runs, with or without Ray (one process, torchrun, or a
Ray Train worker).

Construction sets up everything, the resume included, so that `train_step()` can run alone;
`fit()` reads as the loop it is: step, maybe log, maybe evaluate, maybe checkpoint, maybe stop.
Each concern lives in its own component: the DeepSpeed engine (model, optimizer, ZeRO), the
loaders, the Checkpointer (what to resume, progress, when and where to save), the MetricsLogger
(windows, MFU, metrics.jsonl, MLflow), the SampleKeyAudit and the StopRequest (signals, the
STOP file). One optimizer step = `accum` micro-batches of `micro_batch_size` on every rank.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import time
from collections.abc import Callable
from typing import Any

import torch

from pipelines.data.loader.shard_loader import ShardLoader
from pipelines.data.loader.train_sources import TrainSources, open_train_sources
from pipelines.data.manifest import read_manifest
from pipelines.data.mixing import mix_batch
from pipelines.distributed import DistContext
from pipelines.evaluation.evaluate import EvalResult, evaluate
from pipelines.evaluation.probe import fewshot_on_shards
from pipelines.layout import STOP_REQUEST
from pipelines.numerics import numerics_info
from pipelines.seeds import mix_seed
from pipelines.train.checkpointer import Checkpointer, Progress
from pipelines.train.distill import DistillationLoss, Teacher, check_student, load_teacher
from pipelines.train.engine import DeepSpeedEngine
from pipelines.train.fast_path import FastPath
from pipelines.train.losses import classification_loss
from pipelines.train.metrics import MetricsLogger
from pipelines.train.model_init import build_model
from pipelines.train.optim import set_lr
from pipelines.train.peak import (
    Peaks,
    device_name,
    math_dtype,
    measured_peak_flops,
    peak_memory_bytes,
    resolve_peaks,
)
from pipelines.train.request import TrainRequest
from pipelines.train.result import TrainResult
from pipelines.train.sample_keys import SampleKeyAudit
from pipelines.train.schedule import lr_factor
from pipelines.train.stop import StopRequest
from vit_core import ViTConfig, flops

log = logging.getLogger(__name__)

# Steps between the collective that asks every rank whether to stop (a host sync).
STOP_CHECK_EVERY = 5

# The run's loss on (logits, targets, images): images for a teacher to see what the student saw.
LossFn = Callable[[Any, torch.Tensor, torch.Tensor], torch.Tensor]


class Trainer:
    def __init__(self, request: TrainRequest, ctx: DistContext):
        self.request, self.ctx = request, ctx
        self.config = config = request.config
        torch.manual_seed(config.train.seed)
        sources = open_train_sources(config.data)
        self.num_classes = config.model.num_classes or sources.num_classes
        model = build_model(request, self.num_classes)
        if config.model.grad_checkpointing:
            model.set_grad_checkpointing(True)
        if config.distill is not None:
            check_student(model)
            model.set_distilled_training(True)  # training returns (class, distillation) logits
        self.architecture = model.config
        classes = list(sources.classes) if len(sources.classes) == self.num_classes else None
        self.checkpointer = Checkpointer(request, ctx, architecture=model.config, classes=classes)
        self.fast = FastPath.resolve(config, on_gpu=ctx.device == "cuda")
        self.engine = DeepSpeedEngine(
            config, model, ctx, load_universal=self.checkpointer.load_universal, fast=self.fast
        )
        self.accum = config.grad_accum_steps(ctx.world_size)
        self.mixing = config.augment.mixup_alpha > 0 or config.augment.cutmix_alpha > 0
        self.teacher = self._teacher(model.config)
        self.loss = self._loss()
        img_size = model.config.img_size
        self.train_loader = ShardLoader.from_config(
            config,
            ctx,
            config.data.train_split,
            train=True,
            img_size=img_size,
            root=sources,
            device=self.engine.device if self.fast.prefetch else None,
            decode_on=self.engine.device if config.data.decode_device == "cuda" else None,
        )
        self.val_loader = self._val_loader(img_size, sources)
        self.mixed_sources = self._mixed_sources()
        self.run = request.files(ctx.node_id)
        self.stop = StopRequest(self.run.at(STOP_REQUEST))
        self.lr = config.optim.lr
        self.last_eval: EvalResult | None = None
        self.last_fewshot: dict[str, float] = {}
        self._resume()

    def _resume(self) -> None:
        """Continue where the chosen checkpoint left off (or start fresh), in the order exact
        resume depends on: this rank's RNG and the loader's position first, then the logs cut
        back to the resumed step, then the batch iterator (which draws from that RNG)."""
        self.progress: Progress = self.checkpointer.restore(self.engine, self.train_loader)
        self.metrics = self._metrics_logger()  # a collective: every rank
        self.sample_keys = SampleKeyAudit.start(
            enabled=self.config.train.record_sample_keys,
            run=self.run,
            ctx=self.ctx,
            resume_step=self.checkpointer.resumed_step,
        )
        self._batches = iter(self.train_loader)
        self.engine.train()

    def fit(self) -> TrainResult | None:
        """Train to `train.total_steps`, or to a stop request; rank 0 returns the result."""
        total = self.config.train.total_steps
        log_every = self.config.train.log_every_n_steps
        status = "finished"
        self._log_start()
        with self.stop.on_signals(signal.SIGTERM, signal.SIGINT):
            while self.progress.step < total:
                self.train_step()
                step = self.progress.step
                done = step >= total
                stopping = self._stop_requested(done)
                if done or stopping or step % log_every == 0:
                    self._log_train()
                self._maybe_evaluate(done)
                if self.checkpointer.due(step, force=done or stopping):
                    self.progress.samples_per_source = self.metrics.fold_sources()
                if self.checkpointer.maybe_save(step, force=done or stopping):
                    self.sample_keys.sync()
                if stopping and not done:
                    status = "stopped"
                    break
        return self._result(status)

    def train_step(self) -> None:
        """One optimizer step: `accum` micro-batches forward and backward, then the update."""
        config, step = self.config, self.progress.step
        factor = lr_factor(step, config.train.total_steps, config.schedule)
        self.lr = set_lr(self.engine.optimizer, config.optim.lr, factor)
        for micro in range(self.accum):
            batch, wait = self._next_batch()
            self.sample_keys.record(
                step=step + 1,
                epoch=self.progress.epoch,
                keys=batch["key"],
                sources=batch["source"] if self.mixed_sources else None,
            )
            images, targets = batch["image"], batch["label"]
            if self.mixing:
                images, targets = self._mix(images, targets, step, micro)
            logits = self.engine(images)
            loss = self.loss(logits, targets.to(self.engine.device), images)
            self.engine.backward(loss)
            self.engine.step()
            self.metrics.add(loss, images.shape[0], wait, batch.get("source", ()))
        self.progress.step += 1
        self.progress.samples_seen += config.train.global_batch_size

    # -- the pieces of the loop -------------------------------------------------------------

    def _next_batch(self) -> tuple[dict[str, Any], float]:
        """The next micro-batch (rolling over to the next epoch) and the seconds waited for it."""
        start = time.perf_counter()
        batch = next(self._batches, None)
        while batch is None:
            self.progress.epoch += 1
            self.train_loader.set_epoch(self.progress.epoch)
            self._batches = iter(self.train_loader)
            batch = next(self._batches, None)
        return batch, time.perf_counter() - start

    def _teacher(self, student: ViTConfig) -> Teacher | None:
        """DeiT distillation (`distill:`): the teacher runs beside the engine on every rank, in
        the training precision, frozen; it is neither sharded nor checkpointed."""
        if self.config.distill is None:
            return None
        return load_teacher(
            self.config.distill,
            num_classes=self.num_classes,
            img_size=student.img_size,
            device=self.engine.device,
            dtype=self.engine.input_dtype,
        )

    def _loss(self) -> LossFn:
        """The run's loss, decided once: DeiT's with a teacher, else the classification loss.
        Mixup/CutMix fold label smoothing into their soft targets, so then the loss adds none."""
        train = self.config.train
        smoothing = 0.0 if self.mixing else train.label_smoothing
        if self.teacher is None:
            return lambda logits, targets, images: classification_loss(
                logits, targets, kind=train.loss, label_smoothing=smoothing
            )
        distill = DistillationLoss.from_config(self.config)
        distill = dataclasses.replace(distill, label_smoothing=smoothing)
        return lambda logits, targets, images: distill(
            logits, targets, self._teacher_logits(images)
        )

    def _teacher_logits(self, images: torch.Tensor) -> torch.Tensor:
        """On exactly the student's batch (after Mixup/CutMix), as the engine feeds it."""
        x = images.to(self.engine.device, dtype=self.engine.input_dtype, non_blocking=True)
        with torch.autocast(self.engine.device.type, torch.bfloat16, enabled=self.fast.autocast):
            return self.teacher(x)

    def _mix(self, images, labels, step: int, micro: int):
        augment = self.config.augment
        generator = torch.Generator().manual_seed(
            mix_seed(self.config.train.seed, step, micro, self.ctx.rank)
        )
        return mix_batch(
            images,
            labels,
            num_classes=self.num_classes,
            mixup_alpha=augment.mixup_alpha,
            cutmix_alpha=augment.cutmix_alpha,
            label_smoothing=self.config.train.label_smoothing,
            generator=generator,
        )

    def _stop_requested(self, done: bool) -> bool:
        """`--stop-at-step`, or a stop request on any rank (a collective every few steps)."""
        step = self.progress.step
        stopping = step == self.request.stop_at_step
        if done or step % STOP_CHECK_EVERY == 0:
            # Rank 0 reads the STOP file (on a cluster, a storage request); a signal reaches any.
            asked = self.stop.requested() if self.ctx.is_main else self.stop.signalled()
            stopping = self.ctx.any_true(asked) or stopping
        return stopping

    def _log_train(self) -> None:
        skipped = self.train_loader.stats().get("samples_skipped", 0)
        self.metrics.log_train(
            step=self.progress.step,
            epoch=self.progress.epoch,
            samples_seen=self.progress.samples_seen,
            lr=self.lr,
            grad_norm=self.engine.grad_norm(),
            skipped=float(skipped),
        )

    def _maybe_evaluate(self, done: bool) -> None:
        """Validation every `train.eval_every_n_steps` and at the end; the few-shot probe every
        `train.fewshot_every_n_steps` and at the end."""
        step, train = self.progress.step, self.config.train
        if self.val_loader is not None and (
            done or (train.eval_every_n_steps and step % train.eval_every_n_steps == 0)
        ):
            self.engine.train(False)
            self.last_eval = evaluate(
                self.engine,
                self.val_loader,
                self.ctx,
                num_classes=self.num_classes,
                max_batches=train.eval_max_batches,
            )
            self.engine.train(True)
            self.metrics.log_eval(step, self.last_eval.metrics())
        every = train.fewshot_every_n_steps
        if self.config.data.fewshot_shards and every and (done or step % every == 0):
            self.engine.train(False)
            try:
                self.last_fewshot = fewshot_on_shards(
                    self.engine.features,
                    self.config,
                    self.config.data.fewshot_shards,
                    ctx=self.ctx,
                    img_size=self.architecture.img_size,
                    shots=train.fewshot_shots,
                )
            finally:
                self.engine.train(True)
            self.metrics.log_eval(step, self.last_fewshot)

    # -- set-up and result ------------------------------------------------------------------

    def _val_loader(self, img_size: int, sources: TrainSources) -> ShardLoader | None:
        """`data.val_split` of `data.val_shards`, else of the (first) training source."""
        data = self.config.data
        root = data.val_root()
        manifest = read_manifest(root) if data.val_shards else sources.sources[0].manifest
        if data.val_split not in manifest.splits:
            return None
        return ShardLoader.from_config(
            self.config, self.ctx, data.val_split, train=False, img_size=img_size, root=root
        )

    def _metrics_logger(self) -> MetricsLogger:
        return MetricsLogger(
            ctx=self.ctx,
            run=self.run,
            tracking=self.request.tracking,
            resume_step=self.checkpointer.resumed_step,
            total_steps=self.config.train.total_steps,
            flops_per_image=float(flops(self.architecture)),
            teacher_flops_per_image=self.teacher.flops_per_image if self.teacher else None,
            peaks=self._peaks(),
            device=self.engine.device,
            source_names=self.mixed_sources,
            samples_per_source=self.progress.samples_per_source,
        )

    def _mixed_sources(self) -> tuple[str, ...]:
        """A mix's source names (its metrics count samples per source); () for one shard set."""
        names = self.train_loader.source_names
        return names if len(names) > 1 else ()

    def _peaks(self) -> Peaks:
        """The rated peak of the dtype the matmuls run in (`mfu`) and the measured one."""
        on_gpu = self.ctx.device == "cuda"
        precision = self.config.deepspeed.precision
        dtype = math_dtype(precision, autocast=self.fast.autocast, on_gpu=on_gpu)
        measure = dtype if on_gpu else "fp32"
        ctx = self.ctx
        found = ctx.on_main(
            lambda: (device_name(ctx.torch_device()), measured_peak_flops(ctx.device, measure))
        )
        name, measured = ctx.broadcast_object(found)
        return resolve_peaks(
            name, dtype, measured=measured, override_tflops=self.config.train.peak_tflops
        )

    def _log_start(self) -> None:
        if not self.ctx.is_main:
            return
        config = self.config
        log.info(
            "%s: %d worker(s), ZeRO-%d %s, micro-batch %d x accum %d x world %d = %d, "
            "%d batches/epoch/rank, starting at step %d/%d; %s",
            self.request.stage,
            self.ctx.world_size,
            config.deepspeed.zero_stage,
            config.deepspeed.precision,
            config.train.micro_batch_size,
            self.accum,
            self.ctx.world_size,
            config.train.global_batch_size,
            self.train_loader.batches_per_epoch,
            self.progress.step,
            config.train.total_steps,
            self.fast.describe(),
        )

    def _result(self, status: str) -> TrainResult | None:
        overall = self.metrics.finish()  # a collective: every rank
        if not self.ctx.is_main:
            return None
        evaluated, resumed = self.last_eval, self.checkpointer.resume_from
        return TrainResult(
            stage=self.request.stage,
            status=status,
            steps=self.progress.step,
            epoch=self.progress.epoch,
            samples_seen=self.progress.samples_seen,
            world_size=self.ctx.world_size,
            nodes=self.metrics.ranks_by_node,
            final_train_loss=self.metrics.last_loss,
            val_top1=evaluated.top1 if evaluated else None,
            val_top5=evaluated.top5 if evaluated else None,
            val_loss=evaluated.loss if evaluated else None,
            **overall,
            fast_path=self.fast.describe(),
            numerics=numerics_info(),
            peak_memory_bytes=peak_memory_bytes(self.engine.device),
            checkpoint=self.checkpointer.last_saved,
            resumed_from=resumed.uri if resumed else None,
            num_classes=self.num_classes,
            fewshot=dict(self.last_fewshot),
            loader=self.train_loader.stats(),
        )
