"""Training-step throughput and MFU of vit_core's ViT against timm's VisionTransformer (baseline).

One script, three modes, one runner class per mode (as timm's benchmark.py has):

    the sweep (default)   SweepRunner, _sweep_runner.py: every model x mode (eager, compiled),
                          both impls: img/s, step ms, MFU, peak memory, the vit_core/timm ratio
    --profile             ProfileRunner, _profile_runner.py: the first model and mode under
                          torch.profiler: top ops per impl, the ops whose self time differs most
    --with-loader SHARDS  LoaderRunner, _loader_runner.py: vit_core fed by the real ShardLoader:
                          img/s and the data-wait fraction

Every mode runs the same step (`_step_runner.py`: the runners' base and one implementation's step):
both implementations get the same config (`vit_core.timm_kwargs`), the same synthetic batch already
on the device, and forward + cross-entropy + backward + AdamW (fused; foreach where fused is
unsupported) + `zero_grad(set_to_none=True)`, under bf16 autocast or in fp32. Nothing in a step
syncs with the host; a timed window syncs once at each end (`_measure.py`). Warmup steps
(compilation included) are untimed. The sweep runs windows interleaved (vit_core, timm, vit_core,
...) so that drift in the machine's speed hits both, and each row reports the median window. The
ratio column is the median over window pairs of vit_core / timm step time (adjacent windows see the
same machine; lower is better, <= 1 is the goal); the ratio of the medians and of the best windows
follow the table. MFU = 3 x vit_core.flops(config) x img/s / peak against the chip's rated dense
peak for the dtype (`pipelines.train.peak`, what the training loop and published MFU figures use; a
CPU or an unlisted chip falls back to the measured one), and `MFU meas.` against a large matmul in
the same dtype on the same device, measured at start and again at the end (the larger is used: on a
shared machine one of them may be low). Timing, peaks and memory are `_measure.py`'s; the header,
tables and JSON report `_report.py`'s. `--kernels N` adds the top N kernels (torch.profiler, device
self time) of vit_core in one model and mode (`--kernels-pair`, default the first), profiled after
its timing; `--json` is rewritten after every pair.
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
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _loader_runner import LoaderRunner  # noqa: E402
from _measure import DTYPES, peak_flops  # noqa: E402
from _profile_runner import ProfileRunner  # noqa: E402
from _report import finish_report, run_header, tflops  # noqa: E402
from _step_runner import MODES, StepRunner, precision  # noqa: E402
from _sweep_runner import SweepRunner  # noqa: E402

import vit_core  # noqa: E402

CUDA_MODELS = ("vit_small_patch16", "vit_base_patch16", "vit_large_patch16")
# ViT-Ti/16 at 96 px (37 tokens) and an S-width model at 64 px with 6 blocks. On 2 shared cores:
# ~1.5 min with a warm inductor cache, ~3 min with a cold one (compilation dominates).
CPU_MODELS = ("vit_tiny_patch16_96", "vit_small_patch16_64:depth=6")
CPUS = os.cpu_count() or 1


def runner_class(args: argparse.Namespace) -> type[StepRunner]:
    """The mode the flags ask for: --profile, else --with-loader, else the sweep."""
    if args.profile:
        return ProfileRunner
    if args.with_loader is not None:
        return LoaderRunner
    return SweepRunner


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
    p.add_argument("--debug", action="store_true", help="raise failures instead of reporting")
    sweep = p.add_argument_group("the sweep (default mode): SweepRunner, _sweep_runner.py")
    sweep.add_argument(
        "--kernels", type=int, default=0, help="top N kernels of one pair's vit_core"
    )
    sweep.add_argument(
        "--kernels-pair", default=None, metavar="MODEL@MODE", help="default: the first"
    )
    profile = p.add_argument_group("--profile mode: ProfileRunner, _profile_runner.py")
    profile.add_argument(
        "--profile",
        action="store_true",
        help="instead of the sweep: profile the first model and mode, print top-15 ops per impl",
    )
    profile.add_argument(
        "--profile-steps", type=int, default=3, help="profiled steps (also for --kernels)"
    )
    loader = p.add_argument_group("--with-loader mode: LoaderRunner, _loader_runner.py")
    loader.add_argument(
        "--with-loader",
        default=None,
        metavar="SHARD_DIR",
        help="instead of the sweep: vit_core fed by the real ShardLoader; img/s and data-wait",
    )
    loader.add_argument("--split", default="train", help="--with-loader: the manifest split")
    loader.add_argument(
        "--device-decode",
        action="store_true",
        help="--with-loader: decode JPEGs and crop on --device (data.decode_device: cuda)",
    )
    loader.add_argument("--workers", type=int, default=None, help="--with-loader: loader workers")
    args = p.parse_args(argv)
    _resolve(p, args)
    return args


def _resolve(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Per-device defaults, checks, and the (model, mode) pairs with their configs."""
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
    peak = peak_flops(device, DTYPES[args.dtype])
    import timm

    report = run_header(device, timm=timm.__version__)
    report.update(dtype=args.dtype, threads=torch.get_num_threads(), peak_flops=peak)
    report["compile_mode"] = args.compile_mode
    if threads_note:
        print(f"torch threads: {torch.get_num_threads()}{threads_note}")
    print(
        f"precision {precision(args.dtype)} | peak at start (measured {args.dtype} matmul): "
        f"{tflops(peak)}"
    )
    print(
        f"warmup {args.warmup} steps, {args.windows} windows x {args.steps} steps per impl, "
        f"interleaved; torch.compile mode {args.compile_mode!r}",
        flush=True,
    )
    runner_class(args)(args, device, peak).run(report)
    finish_report(report, started, args.json)
    return report


if __name__ == "__main__":
    main()
