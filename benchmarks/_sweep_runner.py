"""train_step.py's default mode: vit_core against timm for every model and mode (eager,
torch.compile) asked for, one row per implementation, and the vit_core/timm ratio per pair.

Per pair both implementations are built, warmed up (compilation happens there) and timed in
interleaved windows (vit_core, timm, vit_core, ...), so drift in the machine's speed hits both.
The JSON report is rewritten after every pair: what finished survives a timeout of the sweep.
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any

import torch
from _measure import (
    Peaks,
    max_rss_bytes,
    optimizer_state_bytes,
    peak_flops,
    peaks,
    tensor_bytes,
    timed,
)
from _report import format_table, one_line, tflops, write_json
from _step_runner import IMPLS, Impl, StepRunner, count_host_syncs, precision, release, top_kernels

import vit_core
from pipelines.train.peak import peak_memory_bytes

NOISY_SPREAD = 1.5  # slowest / fastest window above this: the machine's speed was not steady


class SweepRunner(StepRunner):
    """Every --pairs (model, mode): rows of img/s, step time, MFU, peak memory and the ratio."""

    key = "rows"
    optimizer_kind = "fused"  # the AdamW kind of the last impl built (foreach without fused)

    def run(self, report: dict[str, Any]) -> None:
        args, device, dtype = self.args, self.device, self.dtype
        rows: list[dict[str, Any]] = []
        for i, (spec, mode) in enumerate(args.pairs, 1):
            print(f"[{i}/{len(args.pairs)}] {spec} {mode} ...", file=sys.stderr, flush=True)
            rows += self.bench_pair(spec, mode)
            add_mfu(rows, peaks(device, dtype, self.peak))
            report[self.key] = rows
            if args.json:
                write_json(report, args.json)
        start, end = self.peak, peak_flops(device, dtype)
        report["peak_flops_start"], report["peak_flops_end"] = start, end
        report["peak_flops"] = peak = max(start, end)  # on a shared machine one may be low
        chip = peaks(device, dtype, peak)
        add_mfu(rows, chip)
        report["mfu_peak"] = {"rated": chip.rated, "measured": chip.measured, "source": chip.source}
        report["optimizer"] = f"AdamW ({self.optimizer_kind})"
        print(
            f"\noptimizer {report['optimizer']} | {precision(args.dtype)} | MFU = 3 x "
            f"vit_core.flops x img/s / peak: MFU against the {chip.source} "
            f"({tflops(chip.rated)}), MFU meas. against the measured {args.dtype} matmul "
            f"{tflops(peak)} (best of start {tflops(start)} and end {tflops(end)})"
        )
        print_table(rows, device)
        if device.type == "cpu":
            print(f"process max RSS {max_rss_bytes() / 2**30:.2f} GiB (per-row memory: -)")

    def bench_pair(self, spec: str, mode: str) -> list[dict[str, Any]]:
        """vit_core and timm, interleaved, for one model and mode: one row per impl."""
        args, device = self.args, self.device
        config = args.configs[spec]
        batch = self.batch_size(spec)
        base = {"model": spec, "mode": mode, "batch": batch, "img_size": config.img_size}
        impls: dict[str, Impl] = {}
        errors: dict[str, str] = {}
        warmup_s: dict[str, float] = {}
        host_syncs: dict[str, int | None] = {}
        x, y = self.synthetic_batch(config, batch)
        for name in IMPLS:
            try:
                impl = self.build(name, config, mode)
                self.optimizer_kind = impl.optimizer_kind
                start = time.perf_counter()
                timed(impl.step, x, y, args.warmup, device)  # compilation happens here
                warmup_s[name] = time.perf_counter() - start
                host_syncs[name] = count_host_syncs(impl.step, x, y, device)
                print(f"  {name}: warmup {warmup_s[name]:.1f} s", file=sys.stderr, flush=True)
                impls[name] = impl
            except Exception as err:  # compile without a C++ toolchain, OOM, ...: one line, go on
                if args.debug:
                    raise
                errors[name] = one_line(err)
        try:
            self.time_windows(impls, x, y)
        except Exception as err:
            if args.debug:
                raise
            errors.update({name: one_line(err) for name in impls})
            impls = {}

        flops = vit_core.flops(config)
        rows = []
        for name in IMPLS:
            row: dict[str, Any] = {**base, "impl": name}
            if name in errors:
                rows.append({**row, "status": "failed", "error": errors[name]})
                continue
            impl = impls[name]
            step_s = statistics.median(impl.wall)
            rows.append(
                {
                    **row,
                    "status": "ok",
                    "step_ms": step_s * 1e3,
                    "img_per_s": batch / step_s,
                    "flops_per_img": flops,
                    "peak_mem_bytes": impl.peak_mem,
                    "cpu_step_ms": statistics.median(impl.cpu) * 1e3,
                    "warmup_s": warmup_s[name],
                    "host_syncs_per_step": host_syncs[name],
                    "window_ms": [w * 1e3 for w in impl.wall],
                    "window_spread": max(impl.wall) / min(impl.wall),
                }
            )
        if args.kernels and (spec, mode) == args.kernels_pair and "vit_core" in impls:
            step = impls["vit_core"].step
            rows[0]["kernels"] = top_kernels(step, x, y, device, args.kernels, args.profile_steps)
        if len(impls) == 2:
            ours, timm_impl = impls["vit_core"], impls["timm"]
            paired = [a / b for a, b in zip(ours.wall, timm_impl.wall, strict=True)]
            rows[0]["ratio"] = statistics.median(paired)
            rows[0]["median_ratio"] = rows[0]["step_ms"] / rows[1]["step_ms"]
            rows[0]["cpu_ratio"] = rows[0]["cpu_step_ms"] / rows[1]["cpu_step_ms"]
            rows[0]["min_ratio"] = min(ours.wall) / min(timm_impl.wall)
        del impls, x, y
        release(device)
        return rows

    def time_windows(self, impls: dict[str, Impl], x: torch.Tensor, y: torch.Tensor) -> None:
        """--windows rounds of one --steps window per impl, in turn; each impl's peak memory
        less the other's weights and optimizer state, which are resident meanwhile."""
        args, device = self.args, self.device
        persistent = {
            name: tensor_bytes(i.model.parameters()) + optimizer_state_bytes(i.optimizer)
            for name, i in impls.items()
        }
        for _ in range(args.windows):
            for name, impl in impls.items():
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                wall, cpu = timed(impl.step, x, y, args.steps, device)
                impl.wall.append(wall)
                impl.cpu.append(cpu)
                peak_mem = peak_memory_bytes(device)
                if peak_mem is not None:
                    others = sum(b for other, b in persistent.items() if other != name)
                    impl.peak_mem = max(impl.peak_mem or 0, peak_mem - others)


def add_mfu(rows: list[dict[str, Any]], chip: Peaks) -> None:
    for row in rows:
        if row["status"] == "ok":
            row.update(chip.mfu(3 * row["flops_per_img"] * row["img_per_s"]))


def print_table(rows: list[dict[str, Any]], device: torch.device) -> None:
    """The sweep's table, then per pair the ratios, host syncs and a NOISY warning."""
    header = ["model", "mode", "impl", "batch", "img/s", "step ms", "MFU", "MFU meas.", "peak mem"]
    header.append("vit_core/timm")
    cells = []
    for r in rows:
        if r["status"] != "ok":
            cells.append([r["model"], r["mode"], r["impl"], str(r["batch"]), "failed"] + [""] * 5)
            continue
        mem = "-" if r["peak_mem_bytes"] is None else f"{r['peak_mem_bytes'] / 2**30:.2f} GiB"
        ratio = f"{r['ratio']:.3f}" if "ratio" in r else ""
        cells.append(
            [
                r["model"],
                r["mode"],
                r["impl"],
                str(r["batch"]),
                f"{r['img_per_s']:.1f}",
                f"{r['step_ms']:.2f}",
                f"{100 * r['mfu']:.1f}%",
                f"{100 * r['mfu_measured_peak']:.1f}%",
                mem,
                ratio,
            ]
        )
    print(format_table(header, cells))
    for ours, base in zip(rows[0::2], rows[1::2], strict=True):  # bench_pair's (vit_core, timm)
        for r in (ours, base):
            if r["status"] != "ok":
                print(f"failed: {r['model']} {r['mode']} {r['impl']}: {r['error']}")
        if "ratio" not in ours:
            continue
        extra = f", process-CPU-time ratio {ours['cpu_ratio']:.3f}" if device.type == "cpu" else ""
        if ours["host_syncs_per_step"] is not None:
            extra += (
                f"; host syncs per step: vit_core {ours['host_syncs_per_step']}, "
                f"timm {base['host_syncs_per_step']}"
            )
        spread = max(ours["window_spread"], base["window_spread"])
        if spread > NOISY_SPREAD:
            extra += f"; NOISY: window times vary up to {spread:.1f}x"
        print(
            f"ratio {ours['model']} {ours['mode']}: {ours['ratio']:.3f} (median of window "
            f"pairs), {ours['median_ratio']:.3f} (of median steps), {ours['min_ratio']:.3f} "
            f"(of best windows){extra}"
        )
