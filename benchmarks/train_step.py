"""Training-step throughput and MFU of vit_core's ViT against timm's VisionTransformer (baseline).

For each model x mode (eager, torch.compile) both implementations get the same config
(`vit_core.timm_kwargs`), the same synthetic batch already on the device, and the same step:
forward + cross-entropy + backward + AdamW (fused; foreach where fused is unsupported) +
`zero_grad(set_to_none=True)`, under bf16 autocast or in fp32. Nothing in a step syncs with the
host; a timed window syncs once at each end. Warmup steps (compilation included) are untimed,
windows run interleaved (vit_core, timm, vit_core, timm, ...) so that drift in the machine's
speed hits both, and each row reports the median window. The ratio column is the median over
window pairs of vit_core / timm step time (adjacent windows see the same machine; lower is
better, <= 1 is the goal); the ratio of the medians and of the best windows follow the table.
MFU = 3 x vit_core.flops(config) x img/s / peak against the chip's rated dense peak for the dtype
(`pipelines.train.peak`, what published MFU figures use; a CPU or an unlisted chip falls back to
the measured one), and `MFU meas.` against a large matmul in the same dtype on the same device,
measured at start and again at the end (the larger is used: on a shared machine one of them may
be low). `--kernels N` adds the top N kernels (torch.profiler, device self time) of vit_core in
one model and mode (`--kernels-pair`, default the first), profiled after its timing; `--json` is
rewritten after every pair.
On a CPU that is busy at start (1-min load average above half the cores) the default is one
torch thread: with more, every parallel op waits for whichever of its threads the OS has
descheduled; `--threads N` overrides.

    python benchmarks/train_step.py --device cpu     # tiny models, 1.5-3 min on 2 cores
    python benchmarks/train_step.py --device cuda    # ViT-S/B/L/16 at 224, bf16 autocast
    python benchmarks/train_step.py --device cuda --models vit_base_patch16 --modes compiled \
        --batch 256 --json runs/bench/train_step.json
    python benchmarks/train_step.py --device cuda --models vit_base_patch16 --profile
    python benchmarks/train_step.py --device cuda --models vit_base_patch16 \
        --with-loader /data/shards                 # real ShardLoader: img/s and data-wait
    python benchmarks/train_step.py --device cuda --models vit_base_patch16 \
        --with-loader /data/shards --device-decode # JPEG decode + crop on the GPU

A model is a vit_core preset name, optionally with an image-size suffix and `:field=value`
overrides of ViTConfig, e.g. `vit_small_patch16_64:depth=6`. Needs torch, timm and this
repository only (no Ray, DeepSpeed, MLflow or WebDataset); `--with-loader` also needs the loader's
dependencies (pyarrow, torchvision, pillow, pydantic).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    DTYPES,
    Peaks,
    finish_report,
    format_table,
    max_rss_bytes,
    one_line,
    optimizer_state_bytes,
    peak_flops,
    peaks,
    run_header,
    sync,
    tensor_bytes,
    timed,
    write_json,
)
from _step_runner import (  # noqa: E402
    Runner,
    build_runner,
    count_host_syncs,
    release,
    synthetic_batch,
    top_kernels,
)

import vit_core  # noqa: E402

IMPLS = ("vit_core", "timm")
MODES = ("eager", "compiled")
CUDA_MODELS = ("vit_small_patch16", "vit_base_patch16", "vit_large_patch16")
CUDA_BATCH = {"vit_small_patch16": 256, "vit_base_patch16": 256, "vit_large_patch16": 128}
# ViT-Ti/16 at 96 px (37 tokens) and an S-width model at 64 px with 6 blocks. On 2 shared cores:
# ~1.5 min with a warm inductor cache, ~3 min with a cold one (compilation dominates).
CPU_MODELS = ("vit_tiny_patch16_96", "vit_small_patch16_64:depth=6")
CPU_BATCH = 16
CPUS = os.cpu_count() or 1
NOISY_SPREAD = 1.5  # slowest / fastest window above this: the machine's speed was not steady


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument(
        "--models",
        nargs="+",
        default=None,
        metavar="MODEL",
        help=f"default: {' '.join(CUDA_MODELS)} on CUDA, {' '.join(CPU_MODELS)} on CPU",
    )
    p.add_argument("--modes", default="eager,compiled", help="comma list of eager, compiled")
    p.add_argument(
        "--pairs",
        nargs="+",
        default=None,
        metavar="MODEL@MODE",
        help="instead of every --models x --modes: these pairs, in this order",
    )
    p.add_argument("--compile-mode", default="default", help="torch.compile mode")
    p.add_argument("--batch", type=int, default=None, help="default: per model (CUDA) / 16 (CPU)")
    p.add_argument("--steps", type=int, default=None, help="steps per window (CUDA 20, CPU 1)")
    p.add_argument("--windows", type=int, default=None, help="timed windows per impl (5, CPU 16)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps (CUDA 10, CPU 2)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="CUDA bf16, CPU fp32")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's; 1 when the CPUs are busy at start)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, metavar="OUT", help="write all rows here")
    p.add_argument(
        "--profile",
        action="store_true",
        help="instead of the sweep: profile the first model and mode, print top-15 ops per impl",
    )
    p.add_argument("--profile-steps", type=int, default=3)
    p.add_argument("--kernels", type=int, default=0, help="top N kernels of one pair's vit_core")
    p.add_argument("--kernels-pair", default=None, metavar="MODEL@MODE", help="default: the first")
    p.add_argument(
        "--with-loader",
        default=None,
        metavar="SHARD_DIR",
        help="instead of the sweep: vit_core fed by the real ShardLoader; img/s and data-wait",
    )
    p.add_argument("--split", default="train", help="--with-loader: the manifest split")
    p.add_argument(
        "--device-decode",
        action="store_true",
        help="--with-loader: decode JPEGs and crop on --device (data.decode_device: cuda)",
    )
    p.add_argument("--workers", type=int, default=None, help="--with-loader: loader workers")
    p.add_argument("--debug", action="store_true", help="raise failures instead of reporting")
    args = p.parse_args(argv)
    cuda = args.device.startswith("cuda")
    args.models = args.models or list(CUDA_MODELS if cuda else CPU_MODELS)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in args.modes if m not in MODES]
    if bad or not args.modes:
        p.error(f"--modes {bad or args.modes}: allowed values are {list(MODES)}")
    # CPU: syncs are free, so one-step windows: many pairs, each pair close in time
    defaults = {"steps": (20, 1), "windows": (5, 16), "warmup": (10, 2), "dtype": ("bf16", "fp32")}
    for name, (on_cuda, on_cpu) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, on_cuda if cuda else on_cpu)
    for name in ("batch", "steps", "windows", "warmup", "profile_steps", "num_classes", "threads"):
        value, least = getattr(args, name), 0 if name == "warmup" else 1
        if value is not None and value < least:
            p.error(f"--{name.replace('_', '-')} {value}: must be >= {least}")
    if args.pairs:
        args.pairs = [tuple(pair.rsplit("@", 1)) for pair in args.pairs]
        bad = [pair for pair in args.pairs if len(pair) != 2 or pair[1] not in MODES]
        if bad:
            p.error(f"--pairs {bad}: each must be MODEL@MODE with MODE one of {list(MODES)}")
        args.models = list(dict.fromkeys(spec for spec, _ in args.pairs))
        args.modes = list(dict.fromkeys(mode for _, mode in args.pairs))
    else:
        args.pairs = [(spec, mode) for spec in args.models for mode in args.modes]
    args.kernels_pair = tuple(args.kernels_pair.rsplit("@", 1)) if args.kernels_pair else None
    args.kernels_pair = args.kernels_pair or args.pairs[0]
    try:
        args.configs = {spec: parse_model(spec, args.num_classes) for spec in args.models}
    except ValueError as err:
        p.error(str(err))
    return args


def _literal(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)


def parse_model(spec: str, num_classes: int) -> vit_core.ViTConfig:
    """`vit_small_patch16_64:depth=6` -> the preset's ViTConfig with those fields overridden."""
    name, *items = spec.split(":")
    overrides: dict[str, Any] = {"num_classes": num_classes}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"model {spec!r}: {item!r} is not FIELD=VALUE")
        overrides[key] = _literal(value)
    config = vit_core.model_config(name, **overrides)
    if config.head != "linear":
        raise ValueError(f"model {spec!r}: timm has no mlp head; use head=linear")
    return config


def default_batch(spec: str, config: vit_core.ViTConfig, device: torch.device) -> int:
    if device.type != "cuda":
        return CPU_BATCH
    return CUDA_BATCH.get(spec, 128 if config.dim >= 1024 else 256)


# ------------------------------------------------------------------------------- the sweep


def bench_pair(
    spec: str, mode: str, args: argparse.Namespace, device: torch.device
) -> list[dict[str, Any]]:
    """vit_core and timm, interleaved, for one model and mode: one row per impl."""
    config = args.configs[spec]
    batch = args.batch or default_batch(spec, config, device)
    base = {"model": spec, "mode": mode, "batch": batch, "img_size": config.img_size}
    runners: dict[str, Runner] = {}
    errors: dict[str, str] = {}
    warmup_s: dict[str, float] = {}
    host_syncs: dict[str, int | None] = {}
    x, y = synthetic_batch(config, batch, device, args.seed)
    for impl in IMPLS:
        try:
            runner, kind = build_runner(impl, config, mode, args, device)
            args.optimizer_kind = kind
            start = time.perf_counter()
            timed(runner.step, x, y, args.warmup, device)  # compilation happens here
            warmup_s[impl] = time.perf_counter() - start
            host_syncs[impl] = count_host_syncs(runner.step, x, y, device)
            print(f"  {impl}: warmup {warmup_s[impl]:.1f} s", file=sys.stderr, flush=True)
            runners[impl] = runner
        except Exception as err:  # compile without a C++ toolchain, OOM, ...: one line, go on
            if args.debug:
                raise
            errors[impl] = one_line(err)
    persistent = {
        impl: tensor_bytes(r.model.parameters()) + optimizer_state_bytes(r.optimizer)
        for impl, r in runners.items()
    }
    try:
        for _ in range(args.windows):
            for impl, runner in runners.items():
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                wall, cpu = timed(runner.step, x, y, args.steps, device)
                runner.wall.append(wall)
                runner.cpu.append(cpu)
                if device.type == "cuda":  # the other impl's weights + optimizer state are resident
                    others = sum(b for name, b in persistent.items() if name != impl)
                    peak_mem = torch.cuda.max_memory_allocated(device) - others
                    runner.peak_mem = max(runner.peak_mem or 0, peak_mem)
    except Exception as err:
        if args.debug:
            raise
        errors.update({impl: one_line(err) for impl in runners})
        runners = {}

    flops = vit_core.flops(config)
    rows = []
    for impl in IMPLS:
        row: dict[str, Any] = {**base, "impl": impl}
        if impl in errors:
            rows.append({**row, "status": "failed", "error": errors[impl]})
            continue
        r = runners[impl]
        step_s = statistics.median(r.wall)
        img_s = batch / step_s
        rows.append(
            {
                **row,
                "status": "ok",
                "step_ms": step_s * 1e3,
                "img_per_s": img_s,
                "flops_per_img": flops,
                "peak_mem_bytes": r.peak_mem,
                "cpu_step_ms": statistics.median(r.cpu) * 1e3,
                "warmup_s": warmup_s[impl],
                "host_syncs_per_step": host_syncs[impl],
                "window_ms": [w * 1e3 for w in r.wall],
                "window_spread": max(r.wall) / min(r.wall),
            }
        )
    if args.kernels and (spec, mode) == args.kernels_pair and "vit_core" in runners:
        kernels = top_kernels(
            runners["vit_core"].step, x, y, device, args.kernels, args.profile_steps
        )
        rows[0]["kernels"] = kernels
    if len(runners) == 2:
        ours, timm_r = runners["vit_core"], runners["timm"]
        paired = [a / b for a, b in zip(ours.wall, timm_r.wall, strict=True)]
        rows[0]["ratio"] = statistics.median(paired)
        rows[0]["median_ratio"] = rows[0]["step_ms"] / rows[1]["step_ms"]
        rows[0]["cpu_ratio"] = rows[0]["cpu_step_ms"] / rows[1]["cpu_step_ms"]
        rows[0]["min_ratio"] = min(ours.wall) / min(timm_r.wall)
    del runners, x, y
    release(device)
    return rows


def print_table(rows: list[dict[str, Any]], device: torch.device) -> None:
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


# ------------------------------------------------------------------------------- profile


def run_profile(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """torch.profiler over a few steps of the first model and mode, for each impl; then the ops
    whose self time differs most between the two (where a ratio != 1 comes from)."""
    from torch.profiler import ProfilerActivity, profile

    spec, mode = args.pairs[0]
    config = args.configs[spec]
    batch = args.batch or default_batch(spec, config, device)
    x, y = synthetic_batch(config, batch, device, args.seed)
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    per_op: dict[str, dict[str, float]] = {}
    for impl in IMPLS:
        runner, _ = build_runner(impl, config, mode, args, device)
        timed(runner.step, x, y, max(args.warmup, 1), device)
        for _ in range(2):  # the first profile of a process pays the profiler's start-up
            with profile(activities=activities) as prof:
                timed(runner.step, x, y, args.profile_steps, device)
        averages = prof.key_averages()
        print(f"\n== {impl}: {spec} {mode} batch {batch}, {args.profile_steps} steps, by {key}")
        print(averages.table(sort_by=key, row_limit=15))
        per_op[impl] = {e.key: getattr(e, key) / args.profile_steps / 1e3 for e in averages}
        del runner, prof
        release(device)
    names = set(per_op["vit_core"]) | set(per_op["timm"])
    diffs = sorted(
        ((per_op["vit_core"].get(n, 0.0) - per_op["timm"].get(n, 0.0), n) for n in names),
        key=lambda d: -abs(d[0]),
    )
    print("\n== self time per step, vit_core - timm (ms; + means vit_core spends more)")
    rows = [
        [n[:70], f"{per_op['vit_core'].get(n, 0.0):.3f}", f"{per_op['timm'].get(n, 0.0):.3f}"]
        + [f"{d:+.3f}"]
        for d, n in diffs[:15]
    ]
    print(format_table(["op", "vit_core ms", "timm ms", "diff ms"], rows))
    totals = {impl: sum(ops.values()) for impl, ops in per_op.items()}
    print(
        f"total self time per step: vit_core {totals['vit_core']:.2f} ms, "
        f"timm {totals['timm']:.2f} ms"
    )
    return {"model": spec, "mode": mode, "batch": batch, "self_ms_per_step": per_op}


# ------------------------------------------------------------------------------- real loader


def _forever(loader: Any) -> Iterator[dict[str, Any]]:
    while True:
        yielded = False
        for batch in loader:
            yielded = True
            yield batch
        if not yielded:
            raise RuntimeError("the loader yielded no batch in a whole epoch")


def run_with_loader(args: argparse.Namespace, device: torch.device, peaks: Peaks) -> dict:
    """vit_core's step fed by the real ShardLoader: img/s and the fraction of wall time the
    host spends blocked in next(batch); then the same steps on synthetic data for reference."""
    from pipelines.config.data import AugmentSection, DataSection
    from pipelines.data.loader import ShardLoader

    spec, mode = args.pairs[0]
    workers = args.workers
    if workers is None:
        workers = max(2, (os.cpu_count() or 2) - 2) if device.type == "cuda" else 2
    data = DataSection(num_workers=workers)
    config = args.configs[spec]
    batch = args.batch or default_batch(spec, config, device)
    loader = ShardLoader(
        str(args.with_loader),
        args.split,
        rank=0,
        world_size=1,
        micro_batch_size=batch,
        seed=args.seed,
        data=data,
        augment=AugmentSection(),
        img_size=config.img_size,
        # The training loop's options: decode on the device, or copy batches one step ahead.
        decode_on=device if args.device_decode else None,
        device=device if device.type == "cuda" and not args.device_decode else None,
    )
    if loader.batches_per_epoch < 1:
        raise SystemExit(
            f"{args.with_loader} split {args.split!r} is too small for batch {batch} with "
            f"{workers} workers; lower --batch or --workers"
        )
    config = config.replace(num_classes=loader.manifest.num_classes)
    runner, _ = build_runner("vit_core", config, mode, args, device)
    batches = _forever(loader)
    n = args.steps * args.windows

    def run(count: int) -> float:
        wait = 0.0
        for _ in range(count):
            start = time.perf_counter()
            b = next(batches)
            wait += time.perf_counter() - start
            x = b["image"].to(device, non_blocking=True)
            y = b["label"].to(device, non_blocking=True)
            runner.step(x, y)
        return wait

    run(max(args.warmup, 1))  # worker start-up and compilation excluded
    sync(device)
    start = time.perf_counter()
    wait = run(n)
    sync(device)
    wall = time.perf_counter() - start
    batches.close()  # stop the loader's workers before the synthetic-data reference
    x, y = synthetic_batch(config, batch, device, args.seed)
    synthetic_s, _ = timed(runner.step, x, y, n, device)
    img_s = n * batch / wall
    result = {
        "model": spec,
        "mode": mode,
        "batch": batch,
        "img_size": config.img_size,
        "workers": workers,
        "device_decode": bool(args.device_decode),
        "steps": n,
        "shards": str(args.with_loader),
        "img_per_s": img_s,
        "step_ms": wall / n * 1e3,
        "data_wait_frac": wait / wall,
        **peaks.mfu(3 * vit_core.flops(config) * img_s),
        "synthetic_img_per_s": batch / synthetic_s,
        "loader_stats": loader.stats(),
    }
    header = ["model", "mode", "batch", "workers", "steps", "img/s", "step ms", "data-wait"]
    header += ["MFU", "synthetic img/s"]
    row = [spec, mode, str(batch), str(workers), str(n), f"{img_s:.1f}"]
    row += [f"{result['step_ms']:.2f}", f"{100 * result['data_wait_frac']:.1f}%"]
    row += [f"{100 * result['mfu']:.1f}%", f"{result['synthetic_img_per_s']:.1f}"]
    print(format_table(header, [row]))
    print(
        f"data-wait = time blocked in next(batch) / wall time; the loader delivers "
        f"{img_s / result['synthetic_img_per_s']:.0%} of the synthetic-data throughput"
    )
    return result


# ------------------------------------------------------------------------------- main


def tflops(flop_per_s: float) -> str:
    return f"{flop_per_s / 1e12:.3f} TFLOP/s"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    started = time.perf_counter()
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available on this machine")
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    threads_note = ""
    if args.threads is None and device.type == "cpu" and load and load[0] > 0.5 * CPUS:
        # Busy shared machine: with several threads every parallel op waits for whichever of
        # its threads is descheduled, which made steps 10-30x slower and ratios noise on 2
        # shared cores; one thread measures steadily. An explicit --threads N is kept.
        args.threads = 1
        threads_note = " (auto: machine busy; --threads N to override)"
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype]
    peak = peak_flops(device, dtype)
    import timm

    report = run_header(device, timm=timm.__version__)
    report.update(dtype=args.dtype, threads=torch.get_num_threads(), peak_flops=peak)
    report["compile_mode"] = args.compile_mode
    if threads_note:
        print(f"torch threads: {torch.get_num_threads()}{threads_note}")
    precision = "bf16 autocast" if args.dtype == "bf16" else "fp32"
    print(f"precision {precision} | peak at start (measured {args.dtype} matmul): {tflops(peak)}")
    print(
        f"warmup {args.warmup} steps, {args.windows} windows x {args.steps} steps per impl, "
        f"interleaved; torch.compile mode {args.compile_mode!r}",
        flush=True,
    )

    if args.profile:
        report["profile"] = run_profile(args, device)
    elif args.with_loader is not None:
        report["loader"] = run_with_loader(args, device, peaks(device, dtype, peak))
    else:
        rows: list[dict[str, Any]] = []
        pairs = args.pairs
        for i, (spec, mode) in enumerate(pairs, 1):
            print(f"[{i}/{len(pairs)}] {spec} {mode} ...", file=sys.stderr, flush=True)
            rows += bench_pair(spec, mode, args, device)
            add_mfu(rows, peaks(device, dtype, peak))
            report["rows"] = rows
            if args.json:  # what finished survives a timeout of the sweep
                write_json(report, args.json)
        peak_end = peak_flops(device, dtype)
        report["peak_flops_start"], report["peak_flops_end"] = peak, peak_end
        report["peak_flops"] = peak = max(peak, peak_end)
        chip = peaks(device, dtype, peak)
        add_mfu(rows, chip)
        report["mfu_peak"] = {"rated": chip.rated, "measured": chip.measured, "source": chip.source}
        report["optimizer"] = f"AdamW ({getattr(args, 'optimizer_kind', 'fused')})"
        print(
            f"\noptimizer {report['optimizer']} | {precision} | MFU = 3 x vit_core.flops x img/s / "
            f"peak: MFU against the {chip.source} ({tflops(chip.rated)}), MFU meas. against the "
            f"measured {args.dtype} matmul {tflops(peak)} (best of start "
            f"{tflops(report['peak_flops_start'])} and end {tflops(peak_end)})"
        )
        print_table(rows, device)
        if device.type == "cpu":
            print(f"process max RSS {max_rss_bytes() / 2**30:.2f} GiB (per-row memory: -)")

    finish_report(report, started, args.json)
    return report


def add_mfu(rows: list[dict[str, Any]], chip: Peaks) -> None:
    for row in rows:
        if row["status"] == "ok":
            row.update(chip.mfu(3 * row["flops_per_img"] * row["img_per_s"]))


if __name__ == "__main__":
    main()
