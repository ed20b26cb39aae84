"""What a training run reports: throughput and data wait over a logging window, reduced over
ranks, MFU, samples seen per source of a mixed training set, `metrics.jsonl` (rank 0, always)
and the MLflow tracker (rank 0, when tracking)."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from pipelines.distributed import DistContext
from pipelines.layout import METRICS
from pipelines.run_storage import RunDir
from pipelines.tracking.async_logger import AsyncMetricLogger
from pipelines.tracking.mlflow_run import TrackingTarget
from pipelines.tracking.system_metrics import start_node_monitor, stop_node_monitor, tag_nodes
from pipelines.train.peak import Peaks

log = logging.getLogger(__name__)


class MetricsFile:
    """Append-only JSON lines with a `step` each, in the run dir (`parts` under it). On resume,
    lines past the resumed step (logged after the checkpoint, before the crash) are dropped so
    the file reads as one clean run. Written locally; `sync` publishes it to run storage."""

    def __init__(self, run: RunDir, *parts: str, resume_step: int | None):
        self._run, self._parts = run, parts
        self.path = run.path(*parts)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.write_text("")
        elif run.fetch(*parts):
            kept = [
                line
                for line in self.path.read_text().splitlines()
                if line.strip() and _step_of(line) is not None and _step_of(line) <= resume_step
            ]
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            tmp.replace(self.path)
        self.sync()

    def write(self, record: dict[str, Any]) -> None:
        clean = {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in record.items()
        }
        with self.path.open("a") as out:
            out.write(json.dumps(clean) + "\n")

    def sync(self) -> None:
        self._run.publish(*self._parts)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _step_of(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


class Throughput:
    """Images/s and the fraction of wall time spent waiting for data, over a logging window."""

    def __init__(self) -> None:
        self._start = time.perf_counter()
        self._images = 0
        self._wait = 0.0
        self.total_images = 0
        self.total_wait = 0.0
        self.total_time = 0.0

    def add(self, images: int, wait_s: float) -> None:
        self._images += images
        self._wait += wait_s

    def window(self) -> tuple[float, float]:
        """(images/s, data-wait fraction) since the last window; starts the next one."""
        elapsed = max(time.perf_counter() - self._start, 1e-9)
        out = (self._images / elapsed, self._wait / elapsed)
        self.total_images += self._images
        self.total_wait += self._wait
        self.total_time += elapsed
        self._start = time.perf_counter()
        self._images = 0
        self._wait = 0.0
        return out

    def overall(self) -> tuple[float, float]:
        if self.total_time <= 0:
            return 0.0, 0.0
        return self.total_images / self.total_time, self.total_wait / self.total_time


class MetricsLogger:
    """Every rank feeds it micro-steps; `log_train`/`finish` are collectives (every rank calls
    them at the same steps); only rank 0 writes metrics.jsonl and talks to MLflow."""

    def __init__(
        self,
        *,
        ctx: DistContext,
        run: RunDir,
        tracking: TrackingTarget | None,
        resume_step: int | None,
        total_steps: int,
        flops_per_image: float,
        teacher_flops_per_image: float | None = None,
        peaks: Peaks,
        device: torch.device,
        source_names: Sequence[str] = (),
        samples_per_source: Mapping[str, int] | None = None,
    ):
        self.ctx = ctx
        self.total_steps = total_steps
        self._flops_per_image = flops_per_image
        self._teacher_flops = teacher_flops_per_image
        self._peaks = peaks
        self._file = MetricsFile(run, METRICS, resume_step=resume_step) if ctx.is_main else None
        self._tracker = (
            AsyncMetricLogger(tracking.uri, tracking.run_id)
            if ctx.is_main and tracking is not None
            else None
        )
        self._node_monitor = self._watch_nodes(tracking)
        self._throughput = Throughput()
        # Summed on the device: reading a loss back every micro-step would sync the host each step.
        self._loss_sum = torch.zeros((), dtype=torch.float32, device=device)
        self._micro_steps = 0
        self._window_start = resume_step or 0  # the step the open window follows
        self.last_loss = math.nan
        # A mix's samples per source: every rank counts its own since the last fold; the totals
        # (over ranks, the whole run) continue the resumed checkpoint's.
        self._source_names = tuple(source_names)
        totals = samples_per_source or {}
        self._source_totals = {name: int(totals.get(name, 0)) for name in self._source_names}
        self._source_window = [0] * len(self._source_names)
        self._source_steps = 0

    def add(
        self, loss: torch.Tensor, images: int, wait_s: float, sources: Sequence[int] = ()
    ) -> None:
        """One micro-step: its loss (on the device), batch size, time spent waiting for it, and
        with a mix the source of each of its samples (`batch["source"]`)."""
        self._loss_sum += loss.detach().float()
        self._micro_steps += 1
        self._throughput.add(images, wait_s)
        if self._source_names:
            self._source_steps += 1
            for source in sources:
                if source >= 0:
                    self._source_window[source] += 1

    def fold_sources(self) -> dict[str, int]:
        """Samples seen per source over all ranks, to this step (a collective when any were
        counted since the last fold: every rank calls it at the same steps)."""
        if self._source_steps:
            self._add_sources(self.ctx.all_reduce_sum([float(n) for n in self._source_window]))
        return dict(self._source_totals)

    def _add_sources(self, reduced: Sequence[float]) -> None:
        for name, count in zip(self._source_names, reduced, strict=True):
            self._source_totals[name] += int(count)
        self._source_window = [0] * len(self._source_names)
        self._source_steps = 0

    def mfu(self, images_per_sec: float) -> dict[str, float]:
        """Model FLOPs utilisation of the student: 3 x forward FLOPs per image (fwd + bwd), over
        the chip's rated peak (`mfu`) and the measured matmul peak (`mfu_measured_peak`); with
        a distillation teacher also `mfu_with_teacher` (+ its forward, rated peak)."""
        world = self.ctx.world_size
        out = self._peaks.mfu(3 * self._flops_per_image * images_per_sec, world)
        if self._teacher_flops is not None:
            flops = (3 * self._flops_per_image + self._teacher_flops) * images_per_sec
            out["mfu_with_teacher"] = self._peaks.mfu(flops, world)["mfu"]
        return out

    def log_train(
        self, *, step: int, epoch: int, samples_seen: int, lr: float, grad_norm, skipped: float
    ) -> None:
        """Close the window: reduce loss, throughput and skipped samples over ranks, write.
        `train/loss` averages the window's steps, which `train/loss_window_steps` counts: fewer
        than `log_every_n_steps` after a resume or before a stop off the logging grid."""
        images, wait = self._throughput.window()
        loss_sum, images, wait, skipped, *per_source = self.ctx.all_reduce_sum(
            [float(self._loss_sum), images, wait, skipped, *map(float, self._source_window)]
        )
        self._add_sources(per_source)
        self.last_loss = loss_sum / (max(self._micro_steps, 1) * self.ctx.world_size)
        self._loss_sum.zero_()
        self._micro_steps = 0
        window_steps, self._window_start = step - self._window_start, step
        record = {
            "step": step,
            "epoch": epoch,
            "samples_seen": samples_seen,
            "train/loss": self.last_loss,
            "train/loss_window_steps": window_steps,
            "lr": lr,
            "grad_norm": grad_norm,
            "images_per_sec": images,
            "data_wait_frac": wait / self.ctx.world_size,
            **self.mfu(images),
            "data/samples_skipped": skipped,
            **{f"data/samples_seen/{name}": n for name, n in self._source_totals.items()},
        }
        self._emit(record)
        if self.ctx.is_main:
            log.info(
                "step %d/%d  loss %.4f  lr %.2e  %.1f img/s  data-wait %.0f%%  mfu %.2f%%",
                step,
                self.total_steps,
                record["train/loss"],
                lr,
                images,
                100 * record["data_wait_frac"],
                100 * record["mfu"],
            )

    def log_eval(self, step: int, metrics: dict[str, float]) -> None:
        """Evaluation results (already the same on every rank); rank 0 writes them."""
        self._emit({"step": step, **metrics})
        if self.ctx.is_main:
            shown = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
            log.info("step %d/%d  %s", step, self.total_steps, shown)

    def finish(self) -> dict[str, Any]:
        """Whole-run throughput over ranks, and whether every metric reached the tracker."""
        stop_node_monitor(self._node_monitor)
        tracking_ok = self._tracker.close() if self._tracker is not None else True
        images, wait = self._throughput.overall()
        images, wait = self.ctx.all_reduce_sum([images, wait])
        return {
            "images_per_sec": images,
            "data_wait_frac": wait / self.ctx.world_size,
            **self.mfu(images),
            "mfu_peak": self._peaks.source,
            "tracking_complete": bool(tracking_ok),
        }

    def _watch_nodes(self, tracking: TrackingTarget | None) -> Any | None:
        """Which ranks run on which node (a run tag, from rank 0), and each node's system
        metrics (from its first rank). A collective: every rank builds its logger."""
        self.ranks_by_node: dict[str, list[int]] = {}
        for node, rank in self.ctx.all_gather_object((self.ctx.node_id, self.ctx.rank)):
            self.ranks_by_node.setdefault(node, []).append(rank)
        if tracking is None:
            return None
        if self.ctx.is_main:
            tag_nodes(tracking, self.ranks_by_node)
        return start_node_monitor(tracking, self.ctx.node_id) if self.ctx.local_rank == 0 else None

    def _emit(self, record: dict[str, Any]) -> None:
        if self._file is None:
            return
        self._file.write(record)
        self._file.sync()
        if self._tracker is not None:
            numbers = {
                k: v for k, v in record.items() if k != "step" and isinstance(v, int | float)
            }
            self._tracker.log(numbers, record["step"])
