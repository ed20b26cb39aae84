"""Optimizer-step time of DeepSpeed ZeRO-0/1/2/3 against plain torch DDP (the baseline).

The script starts N worker processes itself (spawn; gloo on CPU, NCCL with `--device cuda`) on
127.0.0.1 and runs every variant inside that ONE process group. All variants get the same model
(same preset, seed and init), the same per-rank synthetic batches, the same loss
(`classification_loss`, softmax CE), the same AdamW from `build_optimizer` and the same gradient
clipping (`optim.grad_clip`, 1.0). DeepSpeed engines are our `DeepSpeedEngine`, configured by
`deepspeed_config(JobConfig, world_size)` from a JobConfig whose only difference between variants
is the `--set`-style override `deepspeed.zero_stage=N`. DDP is
`torch.nn.parallel.DistributedDataParallel` with default buckets, `clip_grad_norm_` and the same
optimizer; with `--precision bf16` (CUDA) DDP runs under bf16 autocast and ZeRO in DeepSpeed bf16.

Each variant is built once, warmed up (untimed), then timed in windows run interleaved
(DDP, Z0, Z1, Z2, Z3, DDP, Z0, ... for `--rounds` rounds) so that drift in the machine's speed hits
all of them. A window is `--steps` optimizer steps between two barriers (plus a device sync on
CUDA); nothing inside a window syncs with the host beyond what the engine itself does. A window's
time is the slowest rank's. The table shows the median per variant, its ratio to DDP (median /
median; lower is better; the goal is ZeRO-1/2 <= 1.15x), the median of per-round ratios (adjacent
windows), and, as a correctness sanity check, each variant's loss at its last step against DDP's:
after the same steps from the same init and data, DDP and ZeRO-1/2 should agree closely.

    .venv/bin/python benchmarks/zero_vs_ddp.py                  # CPU 2x1 thread: ~1-3 min (load)
    .venv/bin/python benchmarks/zero_vs_ddp.py --device cuda --nprocs 8 --precision bf16 \
        --json runs/bench/zero_vs_ddp.json                     # ViT-B/16 at 224, micro batch 64
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    command_line,
    device_name,
    format_table,
    optimizer_state_bytes,
    sync,
)

import vit_core  # noqa: E402
from pipelines.config import JobConfig, apply_overrides, config_from_dict  # noqa: E402
from pipelines.distributed import DistContext  # noqa: E402
from pipelines.errors import ConfigError  # noqa: E402

VARIANTS = {"ddp": None, "zero0": 0, "zero1": 1, "zero2": 2, "zero3": 3}
GOAL_RATIO = 1.15
GOAL_VARIANTS = ("zero1", "zero2")
CPU_DEFAULTS = {
    "model": "vit_tiny_patch8",
    "img_size": 64,
    "depth": 6,
    "micro_batch": 8,
    "steps": 4,
    "rounds": 10,
    "warmup": 3,
}
CUDA_DEFAULTS = {
    "model": "vit_base_patch16",
    "img_size": 224,
    "depth": None,
    "micro_batch": 64,
    "steps": 10,
    "rounds": 5,
    "warmup": 5,
}
Step = Callable[[list[tuple[torch.Tensor, torch.Tensor]]], torch.Tensor]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--nprocs", type=int, default=2, help="worker processes (GPUs on CUDA)")
    p.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"comma list of {', '.join(VARIANTS)}; ddp (the baseline) is always run",
    )
    p.add_argument("--model", default=None, choices=vit_core.list_models(), metavar="PRESET")
    p.add_argument("--img-size", type=int, default=None, help="CPU 64, CUDA 224")
    p.add_argument("--patch-size", type=int, default=None, help="default: the preset's")
    p.add_argument("--depth", type=int, default=None, help="CPU 6, CUDA the preset's")
    p.add_argument("--dim", type=int, default=None, help="default: the preset's")
    p.add_argument("--num-heads", type=int, default=None, help="default: the preset's")
    p.add_argument("--num-classes", type=int, default=100)
    p.add_argument("--micro-batch", type=int, default=None, help="per process: CPU 8, CUDA 64")
    p.add_argument(
        "--global-batch", type=int, default=None, help="default: micro x nprocs (no accumulation)"
    )
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per window (CPU 4)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (CPU 10)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per variant (CPU 3)")
    p.add_argument("--num-batches", type=int, default=4, help="distinct micro-batches per rank")
    p.add_argument(
        "--threads", type=int, default=None, help="torch threads per process (CPU: cores / nprocs)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, metavar="OUT", help="write all rows here")
    args = p.parse_args(argv)

    cuda = args.device == "cuda"
    for key, value in (CUDA_DEFAULTS if cuda else CPU_DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in args.variants if v not in VARIANTS]
    if bad:
        p.error(f"--variants {bad}: allowed values are {list(VARIANTS)}")
    args.variants = [v for v in VARIANTS if v == "ddp" or v in args.variants]
    if args.precision == "bf16" and not cuda:
        p.error("--precision bf16 is for --device cuda (CPU runs fp32)")
    if cuda:
        if not torch.cuda.is_available():
            p.error("--device cuda: CUDA is not available on this machine")
        if args.nprocs > torch.cuda.device_count():
            p.error(f"--nprocs {args.nprocs}: only {torch.cuda.device_count()} GPUs visible")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    args.cores = cores or 1
    if args.threads is None:
        args.threads = max(1, args.cores // args.nprocs)
    args.global_batch = args.global_batch or args.micro_batch * args.nprocs
    for name in ("nprocs", "micro_batch", "steps", "rounds", "num_batches", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} {getattr(args, name)}: must be >= 1")
    if args.warmup < 0:
        p.error(f"--warmup {args.warmup}: must be >= 0")
    try:
        args.job = job_config(args, zero_stage=0)  # validates the shape and the batch sizes
    except (ConfigError, ValueError) as err:
        p.error(f"these settings make an invalid job config: {err}")
    return args


def job_config(args: argparse.Namespace, *, zero_stage: int) -> JobConfig:
    """Our JobConfig for this run; variants differ only by `deepspeed.zero_stage`."""
    model = {"name": args.model, "img_size": args.img_size, "num_classes": args.num_classes}
    for key in ("patch_size", "depth", "dim", "num_heads"):
        if getattr(args, key) is not None:
            model[key] = getattr(args, key)
    raw = {
        "name": "zero-vs-ddp",
        "model": model,
        "optim": {"name": "adamw", "grad_clip": 1.0},
        "deepspeed": {"precision": args.precision},
        "train": {
            "micro_batch_size": args.micro_batch,
            "global_batch_size": args.global_batch,
            "seed": args.seed,
        },
        "cluster": {"num_workers": args.nprocs, "use_gpu": args.device == "cuda"},
        "tracking": {"enabled": False},
    }
    return config_from_dict(apply_overrides(raw, [f"deepspeed.zero_stage={zero_stage}"]))


def build_model(config: JobConfig) -> torch.nn.Module:
    """As `pipelines.train.model_init.build_model`, from the same seed for every variant."""
    torch.manual_seed(config.train.seed)
    section = config.model
    return vit_core.VisionTransformer(
        section.vit_config(section.num_classes, loss=config.train.loss)
    )


def synthetic_batches(
    args: argparse.Namespace, rank: int, device: torch.device
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`--num-batches` micro-batches for this rank, the same for every variant."""
    gen = torch.Generator().manual_seed(args.seed * 1_000_003 + rank)
    shape = (args.micro_batch, 3, args.img_size, args.img_size)
    return [
        (
            torch.randn(shape, generator=gen).to(device),
            torch.randint(0, args.num_classes, (args.micro_batch,), generator=gen).to(device),
        )
        for _ in range(args.num_batches)
    ]


@dataclass
class Variant:
    name: str
    step: Step
    optimizer: Any
    ds_config: dict[str, Any] | None
    last_loss: torch.Tensor | None = None

    def state_bytes(self) -> int:
        inner = getattr(self.optimizer, "optimizer", self.optimizer)  # DeepSpeed's wrappers
        return optimizer_state_bytes(inner)


def build_ddp(config: JobConfig, ctx: DistContext, device: torch.device) -> Variant:
    from torch.nn.parallel import DistributedDataParallel as DDP

    from pipelines.train.losses import classification_loss
    from pipelines.train.optim import build_optimizer

    model = build_model(config).to(device).train()
    ddp = DDP(model, device_ids=[ctx.local_rank] if device.type == "cuda" else None)
    optimizer = build_optimizer(model, config.optim, on_gpu=device.type == "cuda")
    bf16 = config.deepspeed.precision == "bf16"
    clip = config.optim.grad_clip

    def step(micro_batches: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        accum = len(micro_batches)
        for i, (images, labels) in enumerate(micro_batches):
            with ddp.no_sync() if i < accum - 1 else nullcontext():
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    logits = ddp(images)
                loss = classification_loss(logits, labels, kind=config.train.loss)
                (loss / accum).backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return Variant("ddp", step, optimizer, None)


def build_zero(name: str, config: JobConfig, ctx: DistContext) -> Variant:
    from pipelines.train.engine import DeepSpeedEngine
    from pipelines.train.losses import classification_loss

    engine = DeepSpeedEngine(config, build_model(config), ctx)
    engine.train()

    def step(micro_batches: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        for images, labels in micro_batches:  # as pipelines/train/trainer.py does
            logits = engine(images)
            loss = classification_loss(logits, labels, kind=config.train.loss)
            engine.backward(loss)
            engine.step()
        return loss.detach()

    return Variant(name, step, engine.optimizer, engine.ds_config)


def run_worker(
    rank: int, args: argparse.Namespace, port: int, result_path: str, launcher_pid: int
) -> None:
    """One rank: process group, every variant built, warmed up, then timed interleaved."""
    _die_with_parent(launcher_pid)
    world = args.nprocs
    cuda = args.device == "cuda"
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        LOCAL_SIZE=str(world),  # DeepSpeed's CPU accelerator counts "devices" from it
        LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    os.environ.setdefault("DS_ACCELERATOR", args.device)
    if cuda:
        torch.cuda.set_device(rank)
        device = torch.device("cuda", rank)
    else:
        torch.set_num_threads(args.threads)
        device = torch.device("cpu")
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    log(rank, f"process group up ({dist.get_backend()}, world size {world})")
    try:
        result = bench_variants(args, rank, device)
        if rank == 0:
            Path(result_path).write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def _die_with_parent(launcher_pid: int) -> None:
    """A killed launcher must not leave ranks waiting in a collective (Linux only)."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != launcher_pid:  # it died before the line above
        os._exit(1)


def log(rank: int, message: str) -> None:
    """Progress on rank 0, to stderr (stdout holds the report)."""
    if rank == 0:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def barrier(device: torch.device) -> None:
    sync(device)
    if device.type == "cuda":
        dist.barrier(device_ids=[device.index])
    else:
        dist.barrier()


def bench_variants(args: argparse.Namespace, rank: int, device: torch.device) -> dict[str, Any]:
    import deepspeed
    from deepspeed.utils import logger as ds_logger

    ds_logger.setLevel(logging.WARNING)
    ctx = DistContext(rank=rank, world_size=args.nprocs, local_rank=rank, device=device.type)
    batches = synthetic_batches(args, rank, device)
    accum = args.job.grad_accum_steps(args.nprocs)
    counters = dict.fromkeys(args.variants, 0)

    def micro_batches(name: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
        start = counters[name] * accum
        counters[name] += 1
        return [batches[(start + i) % len(batches)] for i in range(accum)]

    variants: dict[str, Variant] = {}
    build_s: dict[str, float] = {}
    for name in args.variants:
        start = time.perf_counter()
        stage = VARIANTS[name]
        config = job_config(args, zero_stage=stage or 0)
        variants[name] = (
            build_ddp(config, ctx, device) if stage is None else build_zero(name, config, ctx)
        )
        build_s[name] = time.perf_counter() - start
        log(rank, f"built {name} in {build_s[name]:.1f} s")
    for name, variant in variants.items():
        for _ in range(args.warmup):
            variant.last_loss = variant.step(micro_batches(name))
        barrier(device)
    log(rank, f"warmed up ({args.warmup} steps each); timing {args.rounds} rounds")

    wall = torch.zeros(len(variants), args.rounds, dtype=torch.float64)
    cpu = torch.zeros_like(wall)
    for r in range(args.rounds):
        for v, (name, variant) in enumerate(variants.items()):
            barrier(device)
            start, cpu_start = time.perf_counter(), time.process_time()
            for _ in range(args.steps):
                variant.last_loss = variant.step(micro_batches(name))
            barrier(device)
            wall[v, r] = (time.perf_counter() - start) / args.steps
            cpu[v, r] = (time.process_time() - cpu_start) / args.steps
        log(rank, f"round {r + 1}/{args.rounds} done")

    # Outside the timed windows: the slowest rank's wall time; CPU time, last loss and
    # optimizer state as means over ranks.
    losses = torch.tensor(
        [
            float(v.last_loss) if v.last_loss is not None else float("nan")
            for v in variants.values()
        ],
        dtype=torch.float64,
    )
    state = torch.tensor([v.state_bytes() for v in variants.values()], dtype=torch.float64)
    summed = torch.cat([losses, state, cpu.flatten()])
    reduce_device = device if device.type == "cuda" else torch.device("cpu")
    wall, summed = wall.to(reduce_device), summed.to(reduce_device)
    dist.all_reduce(wall, op=dist.ReduceOp.MAX)
    dist.all_reduce(summed, op=dist.ReduceOp.SUM)
    wall, summed = wall.cpu(), summed.cpu()
    summed /= args.nprocs
    n = len(variants)
    losses, state, cpu = summed[:n], summed[n : 2 * n], summed[2 * n :].view_as(cpu)

    model = build_model(args.job)
    return {
        "device": device_name(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "deepspeed": deepspeed.__version__,
        "backend": dist.get_backend(),
        "model": args.model,
        "model_config": model.config.to_dict() if hasattr(model.config, "to_dict") else None,
        "params": vit_core.num_params(model),
        "accum": accum,
        "steps_done": counters,
        "variants": [
            {
                "variant": name,
                "zero_stage": VARIANTS[name],
                "build_s": build_s[name],
                "wall_s": wall[v].tolist(),
                "cpu_s": cpu[v].tolist(),
                "last_loss": losses[v].item(),
                "opt_state_bytes": state[v].item(),
                "ds_config": variant.ds_config,
            }
            for v, (name, variant) in enumerate(variants.items())
        ],
    }


def summarise(result: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    ddp = next(v for v in result["variants"] if v["variant"] == "ddp")
    ddp_median = statistics.median(ddp["wall_s"])
    rows = []
    for v in result["variants"]:
        median = statistics.median(v["wall_s"])
        paired = [a / b for a, b in zip(v["wall_s"], ddp["wall_s"], strict=True)]
        rows.append(
            {
                "variant": v["variant"],
                "zero_stage": v["zero_stage"],
                "step_ms": median * 1e3,
                "min_ms": min(v["wall_s"]) * 1e3,
                "max_ms": max(v["wall_s"]) * 1e3,
                "img_per_s": args.global_batch / median,
                "cpu_ms": statistics.median(v["cpu_s"]) * 1e3,
                "cpu_ratio": statistics.median(v["cpu_s"]) / statistics.median(ddp["cpu_s"]),
                "opt_state_mib": v["opt_state_bytes"] / 2**20,
                "ratio": median / ddp_median,
                "paired_ratio": statistics.median(paired),
                "last_loss": v["last_loss"],
                "loss_diff": abs(v["last_loss"] - ddp["last_loss"]),
                "build_s": v["build_s"],
                "wall_s": v["wall_s"],
                "ds_config": v["ds_config"],
            }
        )
    return rows


def print_table(rows: list[dict[str, Any]], device: str) -> None:
    header = ["variant", "ZeRO", "step ms", "min", "max", "img/s", "opt state MiB/rank"]
    header += ["x DDP", "paired x DDP", "last loss", "|dloss| vs DDP"]
    if device == "cpu":
        header[6:6] = ["CPU ms", "CPU x DDP"]
    cells = []
    for r in rows:
        cell = [
            r["variant"],
            "-" if r["zero_stage"] is None else str(r["zero_stage"]),
            f"{r['step_ms']:.1f}",
            f"{r['min_ms']:.1f}",
            f"{r['max_ms']:.1f}",
            f"{r['img_per_s']:.1f}",
            f"{r['opt_state_mib']:.2f}",
            f"{r['ratio']:.3f}",
            f"{r['paired_ratio']:.3f}",
            f"{r['last_loss']:.6f}",
            f"{r['loss_diff']:.2e}",
        ]
        if device == "cpu":
            cell[6:6] = [f"{r['cpu_ms']:.1f}", f"{r['cpu_ratio']:.3f}"]
        cells.append(cell)
    print(format_table(header, cells))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _seconds_since_process_start() -> float | None:
    try:
        import psutil
    except ImportError:
        return None
    return time.time() - psutil.Process().create_time()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    started = time.perf_counter()
    args = parse_args(argv)
    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"command: {command_line()}")
    print(
        f"{args.nprocs} processes x {args.threads} torch thread(s) on {args.device} "
        f"({args.cores} cores available); variants {', '.join(args.variants)}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="zero_vs_ddp-") as tmp:
        result_path = os.path.join(tmp, "result.json")
        spawn_args = (args, free_port(), result_path, os.getpid())
        mp.spawn(run_worker, args=spawn_args, nprocs=args.nprocs, join=True)
        result = json.loads(Path(result_path).read_text())
    rows = summarise(result, args)
    load_end = os.getloadavg() if load_start is not None else None

    cfg = result["model_config"] or {}
    print(
        f"device: {result['device']} | world size {args.nprocs} ({result['backend']}) | "
        f"torch {result['torch']} | deepspeed {result['deepspeed']}"
    )
    if args.device == "cpu":
        print(
            f"torch threads per process: {result['threads']} "
            f"({args.nprocs} processes share {args.cores} cores)"
        )
    if load_start is not None:
        print(
            "load average (1/5/15 min) at start: "
            + " ".join(f"{v:.2f}" for v in load_start)
            + " | at end: "
            + " ".join(f"{v:.2f}" for v in load_end)
        )
    print(
        f"model {args.model} (img {cfg.get('img_size')}, patch {cfg.get('patch_size')}, "
        f"dim {cfg.get('dim')}, depth {cfg.get('depth')}, heads {cfg.get('num_heads')}, "
        f"{cfg.get('head')} head, {cfg.get('num_classes')} classes), "
        f"{result['params']:,} params"
    )
    print(
        f"micro batch {args.micro_batch} per process, global batch {args.global_batch} "
        f"(accumulation {result['accum']}) | {args.precision}"
        + (" (DDP: bf16 autocast; ZeRO: DeepSpeed bf16)" if args.precision == "bf16" else "")
        + f" | AdamW (build_optimizer), clip {args.job.optim.grad_clip}"
    )
    print(
        f"warmup {args.warmup} steps, then {args.rounds} rounds x {args.steps} steps per "
        f"variant, interleaved; {sum(result['steps_done'].values()) // len(rows)} steps "
        "per variant in all"
    )
    print()
    print_table(rows, args.device)
    print(
        "step ms: median over windows of the slowest rank's wall time per optimizer step; "
        "img/s: all ranks; x DDP: median / DDP median (lower is better); paired: median of "
        "per-round ratios; last loss: rank-mean loss at the last step"
    )
    if args.device == "cpu":
        print(
            "CPU ms: median process CPU time per step (all threads, mean over ranks); time "
            "spent descheduled is not counted, so on a shared machine it is the steadier measure"
        )
    goal = [r for r in rows if r["variant"] in GOAL_VARIANTS]
    if goal:
        met = all(r["ratio"] <= GOAL_RATIO for r in goal)
        ratios = ", ".join(f"{r['variant']} {r['ratio']:.3f}" for r in goal)
        line = f"goal ZeRO-1/2 <= {GOAL_RATIO}x DDP: {'met' if met else 'NOT met'} ({ratios})"
        if args.device == "cpu":
            cpu_met = all(r["cpu_ratio"] <= GOAL_RATIO for r in goal)
            cpu_ratios = ", ".join(f"{r['variant']} {r['cpu_ratio']:.3f}" for r in goal)
            line += f"; by CPU time: {'met' if cpu_met else 'NOT met'} ({cpu_ratios})"
        print(line)
    busy = load_start is not None and max(load_start[0], load_end[0]) > args.cores
    if busy and args.device == "cpu":
        print(
            f"note: the load average exceeded the {args.cores} cores during the run: other "
            "jobs were competing for them, so wall-clock ratios are noisy (see min/max); "
            "the CPU-time columns are the steadier comparison"
        )
    report = {
        "command": command_line(),
        "args": {k: v for k, v in vars(args).items() if k != "job"} | {"json": str(args.json)},
        **{k: v for k, v in result.items() if k != "variants"},
        "load_avg_start": load_start,
        "load_avg_end": load_end,
        "rows": rows,
        "total_s": time.perf_counter() - started,
    }
    since_start = _seconds_since_process_start()
    tail = f" ({since_start:.1f} s since the interpreter started)" if since_start else ""
    print(f"elapsed {report['total_s']:.1f} s{tail}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
        print(f"wrote {args.json}")
    return report


if __name__ == "__main__":
    main()
