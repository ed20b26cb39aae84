"""The training loop every worker runs, with or without Ray (one process, torchrun, Ray Train).

One optimizer step = `accum` micro-batches of `micro_batch_size` on every rank. Rank 0 writes
metrics.jsonl and feeds MLflow; all ranks save and load sharded checkpoints together.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any

import torch

from pipelines.config import JobConfig
from pipelines.data.manifest import Manifest, read_manifest
from pipelines.distributed import DistContext
from pipelines.errors import CheckpointError
from pipelines.evaluation.evaluate import EvalResult, evaluate
from pipelines.numerics import numerics_info
from pipelines.train import checkpoint as ckpt
from pipelines.train.engine import DeepSpeedEngine
from pipelines.train.fast_path import FastPath
from pipelines.train.losses import classification_loss
from pipelines.train.metrics import MetricsFile, Throughput
from pipelines.train.model_init import build_model
from pipelines.train.optim import set_lr
from pipelines.train.peak import measured_peak_flops
from pipelines.train.request import TrainRequest
from pipelines.train.schedule import lr_factor
from pipelines.train.universal import convert_to_universal, universal_location

log = logging.getLogger(__name__)

# Steps between the collective that asks every rank whether to stop (a host sync).
STOP_CHECK_EVERY = 5


@dataclass
class Progress:
    step: int = 0
    epoch: int = 0
    samples_seen: int = 0


def train(request: TrainRequest, ctx: DistContext) -> dict[str, Any] | None:
    """Run the job to `train.total_steps` (or a stop request); returns rank 0's result."""
    config = request.config
    torch.manual_seed(config.train.seed)
    manifest = read_manifest(_train_shards(config))
    num_classes = config.model.num_classes or manifest.num_classes

    resume_from = _resume_checkpoint(request, ctx)
    universal = resume_from is not None and _needs_universal(resume_from, config, ctx)
    if universal:
        ctx.on_main(lambda: convert_to_universal(resume_from))
        ctx.barrier()

    model = build_model(request, num_classes)
    vit_config = model.config
    if config.model.grad_checkpointing:
        model.set_grad_checkpointing(True)
    fast = FastPath.resolve(config, on_gpu=ctx.device == "cuda")
    engine = DeepSpeedEngine(config, model, ctx, load_universal=universal, fast=fast)
    accum = config.grad_accum_steps(ctx.world_size)

    train_loader = _loader(
        config,
        ctx,
        split=config.data.train_split,
        train=True,
        img_size=vit_config.img_size,
        device=engine.device if fast.prefetch else None,
        decode_on=engine.device if config.data.decode_device == "cuda" else None,
    )
    val_loader = _val_loader(config, ctx, vit_config.img_size, manifest)

    progress = Progress()
    if resume_from is not None:
        progress = _restore(engine, train_loader, resume_from, ctx, universal)
    else:
        torch.manual_seed(config.train.seed * 1000 + ctx.rank)
    resumed_step = progress.step if resume_from is not None else None

    metrics_file = ctx.on_main(
        lambda: MetricsFile(request.run_dir / "metrics.jsonl", resume_step=resumed_step)
    )
    keys_file = None
    if config.train.record_sample_keys:
        keys_path = request.run_dir / "sample_keys" / f"rank{ctx.rank:05d}.jsonl"
        keys_file = MetricsFile(keys_path, resume_step=resumed_step)
    tracker = ctx.on_main(lambda: _async_tracker(request))
    flops_per_image = _flops(vit_config)
    peak = _peak_flops(config, ctx, fast)
    meta = _checkpoint_meta(request, vit_config, num_classes, manifest, ctx)

    stop = _StopSignal(request)
    throughput = Throughput()
    # Summed on the device: reading a loss back every micro-step would sync the host each step.
    loss_sum = torch.zeros((), dtype=torch.float32, device=engine.device)
    window_steps = 0
    last_loss = math.nan
    last_eval: EvalResult | None = None
    last_fewshot: dict[str, float] = {}
    last_checkpoint = resume_from.path if resume_from is not None else None
    status = "finished"
    mixing = config.augment.mixup_alpha > 0 or config.augment.cutmix_alpha > 0
    total = config.train.total_steps
    batches = iter(train_loader)
    engine.train()
    _log_start(ctx, request, progress, engine, accum, train_loader, fast)

    with stop.installed():
        while progress.step < total:
            lr = set_lr(
                engine.optimizer, config.optim.lr, lr_factor(progress.step, total, config.schedule)
            )
            for micro in range(accum):
                start = time.perf_counter()
                batch = next(batches, None)
                while batch is None:  # epoch boundary
                    progress.epoch += 1
                    train_loader.set_epoch(progress.epoch)
                    batches = iter(train_loader)
                    batch = next(batches, None)
                wait = time.perf_counter() - start
                if keys_file is not None:
                    record = {
                        "step": progress.step + 1,
                        "epoch": progress.epoch,
                        "keys": batch["key"],
                    }
                    keys_file.write(record)
                images, targets = batch["image"], batch["label"]
                if mixing:
                    images, targets = _mix(
                        config, images, targets, num_classes, progress.step, micro, ctx.rank
                    )
                logits = engine(images)
                loss = classification_loss(
                    logits,
                    targets.to(logits.device),
                    kind=config.train.loss,
                    label_smoothing=0.0 if mixing else config.train.label_smoothing,
                )
                engine.backward(loss)
                engine.step()
                loss_sum += loss.detach().float()
                throughput.add(images.shape[0], wait)
            progress.step += 1
            progress.samples_seen += config.train.global_batch_size
            window_steps += 1
            done = progress.step >= total
            stopping = progress.step == request.stop_at_step
            if done or progress.step % STOP_CHECK_EVERY == 0:
                stopping = ctx.any_true(stop.requested()) or stopping

            if progress.step % config.train.log_every_n_steps == 0 or done or stopping:
                record = _window_metrics(
                    ctx, loss_sum, window_steps * accum, throughput, engine, lr, progress
                )
                record["mfu"] = (
                    3 * flops_per_image * record["images_per_sec"] / (peak * ctx.world_size)
                )
                record.update(_loader_metrics(ctx, train_loader))
                last_loss = record["train/loss"]
                loss_sum.zero_()
                window_steps = 0
                ctx.on_main(lambda r=record: _emit(metrics_file, tracker, r, total))

            every_eval = config.train.eval_every_n_steps
            if val_loader is not None and (
                done or (every_eval and progress.step % every_eval == 0)
            ):
                engine.train(False)
                last_eval = evaluate(
                    engine,
                    val_loader,
                    ctx,
                    num_classes=num_classes,
                    max_batches=config.train.eval_max_batches,
                )
                engine.train(True)
                record = {"step": progress.step, **last_eval.metrics()}
                ctx.on_main(lambda r=record: _emit(metrics_file, tracker, r, total))

            every_fewshot = config.train.fewshot_every_n_steps
            if (
                config.data.fewshot_shards
                and every_fewshot
                and (done or progress.step % every_fewshot == 0)
            ):
                last_fewshot = _fewshot(engine, config, ctx, vit_config.img_size)
                record = {"step": progress.step, **last_fewshot}
                ctx.on_main(lambda r=record: _emit(metrics_file, tracker, r, total))

            every_ckpt = config.checkpoint.every_n_steps
            if done or stopping or (every_ckpt and progress.step % every_ckpt == 0):
                last_checkpoint = _save(engine, train_loader, progress, request, ctx, meta)
            if stopping and not done:
                status = "stopped"
                break

    tracking_ok = ctx.on_main(lambda: tracker.close() if tracker else True)
    overall = throughput.overall()
    world_images, world_wait = ctx.all_reduce_sum(
        [overall["images_per_sec"], overall["data_wait_frac"]]
    )
    if not ctx.is_main:
        return None
    result = {
        "stage": request.stage,
        "status": status,
        "steps": progress.step,
        "epoch": progress.epoch,
        "samples_seen": progress.samples_seen,
        "world_size": ctx.world_size,
        "final_train_loss": last_loss,
        "val_top1": last_eval.top1 if last_eval else None,
        "val_top5": last_eval.top5 if last_eval else None,
        "val_loss": last_eval.loss if last_eval else None,
        "images_per_sec": world_images,
        "data_wait_frac": world_wait / ctx.world_size,
        "mfu": 3 * flops_per_image * world_images / (peak * ctx.world_size),
        "fast_path": fast.describe(),
        "checkpoint": str(last_checkpoint) if last_checkpoint else None,
        "resumed_from": str(resume_from.path) if resume_from else None,
        "num_classes": num_classes,
        "tracking_complete": bool(tracking_ok),
        "numerics": numerics_info(),
        **last_fewshot,
        **{f"loader_{k}": v for k, v in _loader_stats(train_loader).items()},
    }
    return result


def _train_shards(config: JobConfig) -> str:
    if not config.data.train_shards:
        from pipelines.errors import ConfigError

        raise ConfigError(
            "data.train_shards is not set; point it at a shard directory with manifest.json"
        )
    return config.data.train_shards


def _loader(
    config: JobConfig,
    ctx: DistContext,
    *,
    split: str,
    train: bool,
    img_size: int,
    root: str | None = None,
    device: torch.device | None = None,
    decode_on: torch.device | None = None,
):
    from pipelines.data.loader import ShardLoader

    return ShardLoader(
        root or _train_shards(config),
        split,
        rank=ctx.rank,
        world_size=ctx.world_size,
        micro_batch_size=config.train.micro_batch_size,
        seed=config.train.seed,
        data=config.data,
        augment=config.augment,
        img_size=img_size,
        train=train,
        device=device,
        decode_on=decode_on,
    )


def _val_loader(config: JobConfig, ctx: DistContext, img_size: int, train_manifest: Manifest):
    root = config.data.val_shards or _train_shards(config)
    manifest = train_manifest if root == _train_shards(config) else read_manifest(root)
    if config.data.val_split not in manifest.splits:
        return None
    return _loader(
        config, ctx, split=config.data.val_split, train=False, img_size=img_size, root=root
    )


def _resume_checkpoint(request: TrainRequest, ctx: DistContext) -> ckpt.Checkpoint | None:
    """Rank 0 decides (it alone warns about torn folders); every rank gets the same answer."""

    def decide() -> str | None:
        if request.resume == "never":
            return None
        if request.resume == "auto":
            found = ckpt.latest_checkpoint(request.checkpoint_root)
            return str(found.path) if found else None
        return str(ckpt.open_checkpoint(request.resume).path)

    chosen = ctx.broadcast_object(ctx.on_main(decide) if ctx.is_main else None)
    if chosen is None:
        return None
    found = ckpt.open_checkpoint(chosen)
    _check_same_model(found, request.config)
    return found


def _check_same_model(found: ckpt.Checkpoint, config: JobConfig) -> None:
    saved = found.meta.get("model_section")
    current = config.model.model_dump(mode="json")
    if saved is None or saved == current:
        return
    diff = ", ".join(
        f"model.{k}: {saved.get(k)!r} -> {current.get(k)!r}"
        for k in sorted(set(saved) | set(current))
        if saved.get(k) != current.get(k)
    )
    raise CheckpointError(
        f"checkpoint {found.path} was trained with a different model ({diff}); restore the model "
        "section, or start a new run with --run-dir or --resume never"
    )


def _needs_universal(found: ckpt.Checkpoint, config: JobConfig, ctx: DistContext) -> bool:
    saved_stage = int(found.meta.get("zero_stage", config.deepspeed.zero_stage))
    if saved_stage == 0 and config.deepspeed.zero_stage == 0:
        return False  # unpartitioned: loads on any number of workers as it is
    return found.world_size != ctx.world_size or saved_stage != config.deepspeed.zero_stage


def _restore(
    engine: DeepSpeedEngine, loader, found: ckpt.Checkpoint, ctx: DistContext, universal: bool
) -> Progress:
    load_dir, tag = universal_location(found) if universal else (found.root, found.tag)
    client = engine.load(load_dir, tag)
    saved = client.get("vitpipe") or found.meta
    progress = Progress(
        int(found.step), int(saved.get("epoch", 0)), int(saved.get("samples_seen", 0))
    )
    same_topology = found.world_size == ctx.world_size
    rank_state = ckpt.load_rank_state(found, ctx.rank if same_topology else 0)
    loader.load_state_dict(rank_state["loader"])
    if same_topology:
        ckpt.set_rng_state(rank_state["rng"])
    else:
        torch.manual_seed(found.meta.get("seed", 0) * 1000 + ctx.rank + 7919 * progress.step)
    return progress


def _save(engine, loader, progress: Progress, request: TrainRequest, ctx: DistContext, meta: dict):
    client = {
        "vitpipe": {
            "step": progress.step,
            "epoch": progress.epoch,
            "samples_seen": progress.samples_seen,
        }
    }
    rank_state = {"loader": loader.state_dict(), "rng": ckpt.rng_state(), "step": progress.step}
    full_meta = {
        **meta,
        "step": progress.step,
        "epoch": progress.epoch,
        "samples_seen": progress.samples_seen,
    }
    return ckpt.save_checkpoint(
        request.checkpoint_root,
        progress.step,
        ctx,
        write_engine=lambda root, tag: engine.save(root, tag, client),
        rank_state=rank_state,
        meta=full_meta,
        keep_last=request.config.checkpoint.keep_last,
    )


def _checkpoint_meta(
    request, vit_config, num_classes: int, manifest: Manifest, ctx: DistContext
) -> dict:
    config = request.config
    tracking = request.tracking
    return {
        "stage": request.stage,
        "world_size": ctx.world_size,
        "zero_stage": config.deepspeed.zero_stage,
        "precision": config.deepspeed.precision,
        "seed": config.train.seed,
        "model_section": config.model.model_dump(mode="json"),
        "vit_config": vit_config.to_dict(),
        "num_classes": num_classes,
        "classes": list(manifest.classes) if len(manifest.classes) == num_classes else None,
        "config_fingerprint": config.fingerprint(),
        "model_fingerprint": config.fingerprint("model"),
        "mlflow_run_id": tracking.run_id if tracking else None,
        "mlflow_tracking_uri": tracking.uri if tracking else None,
        "init_from": request.init_from,
        "preprocess": {
            "img_size": vit_config.img_size,
            "mean": list(config.augment.mean),
            "std": list(config.augment.std),
            "crop_pct": config.augment.eval_crop_pct,
        },
    }


def _window_metrics(ctx, loss_sum, micro_steps, throughput, engine, lr, progress) -> dict[str, Any]:
    window = throughput.window()
    total_loss, images, wait = ctx.all_reduce_sum(
        [float(loss_sum), window["images_per_sec"], window["data_wait_frac"]]
    )
    return {
        "step": progress.step,
        "epoch": progress.epoch,
        "samples_seen": progress.samples_seen,
        "train/loss": total_loss / (micro_steps * ctx.world_size),
        "lr": lr,
        "grad_norm": engine.grad_norm(),
        "images_per_sec": images,
        "data_wait_frac": wait / ctx.world_size,
    }


def _loader_stats(loader) -> dict[str, float]:
    stats = getattr(loader, "stats", None)
    return dict(stats()) if callable(stats) else {}


def _loader_metrics(ctx: DistContext, loader) -> dict[str, float]:
    stats = _loader_stats(loader)
    skipped = stats.get("samples_skipped", 0)
    (total_skipped,) = ctx.all_reduce_sum([float(skipped)])
    return {"data/samples_skipped": total_skipped}


def _emit(metrics_file: MetricsFile, tracker, record: dict[str, Any], total: int) -> None:
    metrics_file.write(record)
    if tracker is not None:
        tracker.log(
            {k: v for k, v in record.items() if k != "step" and isinstance(v, int | float)},
            record["step"],
        )
    if "train/loss" in record:
        log.warning(
            "step %d/%d  loss %.4f  lr %.2e  %.1f img/s  data-wait %.0f%%  mfu %.2f%%",
            record["step"],
            total,
            record["train/loss"],
            record["lr"],
            record["images_per_sec"],
            100 * record["data_wait_frac"],
            100 * record.get("mfu", 0.0),
        )
    elif any(k.startswith("fewshot/") for k in record):
        shown = "  ".join(f"{k} {v:.4f}" for k, v in record.items() if k.startswith("fewshot/"))
        log.warning("step %d/%d  %s", record["step"], total, shown)
    elif "val/top1" in record:
        log.warning(
            "step %d/%d  val top-1 %.4f  loss %.4f",
            record["step"],
            total,
            record["val/top1"],
            record["val/loss"],
        )


def _async_tracker(request: TrainRequest):
    if request.tracking is None:
        return None
    from pipelines.tracking.async_logger import AsyncMetricLogger

    return AsyncMetricLogger(request.tracking.uri, request.tracking.run_id)


def _mix(config: JobConfig, images, labels, num_classes: int, step: int, micro: int, rank: int):
    from pipelines.data.mixing import mix_batch

    generator = torch.Generator().manual_seed(
        ((config.train.seed * 1_000_003 + step) * 131 + micro) * 4099 + rank
    )
    return mix_batch(
        images,
        labels,
        num_classes=num_classes,
        mixup_alpha=config.augment.mixup_alpha,
        cutmix_alpha=config.augment.cutmix_alpha,
        label_smoothing=config.train.label_smoothing,
        generator=generator,
    )


def _fewshot(
    engine: DeepSpeedEngine, config: JobConfig, ctx: DistContext, img_size: int
) -> dict[str, float]:
    from pipelines.evaluation.probe import fewshot_on_shards

    engine.train(False)
    try:
        return fewshot_on_shards(
            engine.features,
            config.data.fewshot_shards,
            ctx=ctx,
            data=config.data,
            augment=config.augment,
            img_size=img_size,
            shots=config.train.fewshot_shots,
            seed=config.train.seed,
            micro_batch_size=config.train.micro_batch_size,
        )
    finally:
        engine.train(True)


def _flops(vit_config) -> float:
    from vit_core import flops

    return float(flops(vit_config))


def _peak_flops(config: JobConfig, ctx: DistContext, fast: FastPath) -> float:
    """Against the dtype the matmuls actually run in: bf16 weights or bf16 autocast on a GPU."""
    if config.train.peak_tflops:
        return config.train.peak_tflops * 1e12
    bf16_math = config.deepspeed.precision == "bf16" or fast.autocast
    dtype = "bfloat16" if bf16_math and ctx.device == "cuda" else "float32"
    measured = ctx.on_main(lambda: measured_peak_flops(ctx.device, dtype))
    return float(ctx.broadcast_object(measured))


def _log_start(ctx, request, progress, engine, accum, loader, fast: FastPath) -> None:
    if not ctx.is_main:
        return
    config = request.config
    log.warning(
        "%s: %d worker(s), ZeRO-%d %s, micro-batch %d x accum %d x world %d = %d, %d batches/epoch/rank, "
        "starting at step %d/%d; %s",
        request.stage,
        ctx.world_size,
        config.deepspeed.zero_stage,
        config.deepspeed.precision,
        config.train.micro_batch_size,
        accum,
        ctx.world_size,
        config.train.global_batch_size,
        loader.batches_per_epoch,
        progress.step,
        config.train.total_steps,
        fast.describe(),
    )


class _StopSignal:
    """SIGTERM (where we own the main thread) or a STOP file (any launcher) asks to stop."""

    def __init__(self, request: TrainRequest):
        self._file = request.stop_file
        self._flag = False

    def requested(self) -> bool:
        return self._flag or self._file.exists()

    @contextlib.contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = signal.getsignal(signal.SIGTERM)

        def handler(signum, frame):
            self._flag = True

        signal.signal(signal.SIGTERM, handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, previous)
