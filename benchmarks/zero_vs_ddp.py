"""Optimizer-step time of DeepSpeed ZeRO-0/1/2/3 against plain torch DDP (the baseline).

One process per rank under torchrun (started for you on 127.0.0.1 when run directly). Every
variant has the same model, seed, per-rank batches, loss, AdamW, clipping, precision (`bf16`:
autocast over fp32 weights) and compile setting; ZeRO is our `DeepSpeedEngine` with the JSON from
`deepspeed_config`. Windows of `--steps` steps run interleaved (DDP, Z0, ..., Z3, DDP, ...) and
count the slowest rank. Goal: ZeRO-1/2 <= 1.15x DDP; the last loss vs DDP's checks correctness.

    .venv/bin/python benchmarks/zero_vs_ddp.py                  # CPU, 2 ranks x 1 thread, gloo
    .venv/bin/python benchmarks/zero_vs_ddp.py --device cuda --nprocs 8 --precision bf16 \
        --compile --json runs/bench/zero_vs_ddp.json           # ViT-B/16 at 224, micro batch 64
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from _deepspeed_shm import release_deepspeed_shm
from _measure import optimizer_state_bytes
from _report import compare_windows, finish_report, format_table, print_goal, progress, run_header

import vit_core
from launch.processes.launchers import end_process_group
from launch.processes.ports import free_loopback_port
from pipelines.config import StageConfig, config_from_dict
from pipelines.distributed import DistContext
from pipelines.errors import ConfigError
from pipelines.train import model_init
from pipelines.train.losses import classification_loss
from pipelines.train.optim import build_optimizer
from pipelines.train.peak import sync
from pipelines.train.request import TrainRequest

VARIANTS = {"ddp": None, "zero0": 0, "zero1": 1, "zero2": 2, "zero3": 3}
GOAL_RATIO, GOAL_VARIANTS = 1.15, ("zero1", "zero2")
DEFAULT_KEYS = ("model", "img_size", "depth", "micro_batch", "steps", "rounds", "warmup")
DEFAULTS = {"cpu": ("vit_tiny_patch8", 64, 6, 8, 4, 10, 3), "cuda": ("vit_base_patch16", 224)}
DEFAULTS["cuda"] += (None, 64, 10, 5, 5)  # a depth of None: the preset's
Batches = list[tuple[torch.Tensor, torch.Tensor]]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--nprocs", type=int, default=2, help="ranks (GPUs on CUDA)")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--model", default=None, choices=vit_core.list_models(), metavar="PRESET")
    for name in ("img-size", "patch-size", "depth", "dim", "num-heads", "micro-batch", "steps"):
        p.add_argument(f"--{name}", type=int, default=None)  # None: DEFAULTS or the preset's
    for name in ("rounds", "warmup", "global-batch", "threads"):  # global: micro x nprocs
        p.add_argument(f"--{name}", type=int, default=None)  # threads: cores / nprocs
    p.add_argument("--num-classes", type=int, default=100)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--compile", action="store_true", help="torch.compile on both sides")
    p.add_argument("--num-batches", type=int, default=4, help="distinct micro-batches per rank")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, metavar="OUT")
    args = p.parse_args(argv)
    for key, value in zip(DEFAULT_KEYS, DEFAULTS[args.device], strict=True):
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.variants = [v for v in VARIANTS if v == "ddp" or v in args.variants]  # the baseline
    if args.device == "cuda" and args.nprocs > torch.cuda.device_count():
        p.error(f"--nprocs {args.nprocs}: {torch.cuda.device_count()} GPUs visible")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    args.threads = args.threads or max(1, (cores or 1) // args.nprocs)
    args.global_batch = args.global_batch or args.micro_batch * args.nprocs
    for name in ("nprocs", "micro_batch", "steps", "rounds", "num_batches", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} {getattr(args, name)}: must be >= 1")
    try:
        job_config(args, zero_stage=0).grad_accum_steps(args.nprocs)
    except (ConfigError, ValueError) as err:
        p.error(f"these settings make an invalid job config: {err}")
    return args


def job_config(args: argparse.Namespace, *, zero_stage: int) -> StageConfig:
    """Our StageConfig for this run; variants differ only by `deepspeed.zero_stage`."""
    model = {"name": args.model, "img_size": args.img_size, "num_classes": args.num_classes}
    for key in ("patch_size", "depth", "dim", "num_heads"):
        if getattr(args, key) is not None:
            model[key] = getattr(args, key)
    train = {"micro_batch_size": args.micro_batch, "global_batch_size": args.global_batch}
    # fp32 weights + bf16 autocast, as DDP below: the same math on both sides.
    train.update(seed=args.seed, compile=args.compile, autocast=args.precision == "bf16")
    raw = {
        "name": "zero-vs-ddp",
        "model": model,
        "optim": {"name": "adamw", "grad_clip": 1.0},
        "deepspeed": {"precision": "fp32", "zero_stage": zero_stage},
        "train": {**train, "prefetch_to_device": False},
        "cluster": {"num_workers": args.nprocs, "use_gpu": args.device == "cuda"},
        "tracking": {"enabled": False},
    }
    return config_from_dict(raw)


def build_model(config: StageConfig) -> torch.nn.Module:
    """The model the trainer pretrains from `config`, seeded as the trainer seeds it."""
    torch.manual_seed(config.train.seed)
    request = TrainRequest(config=config, run_dir="")  # nothing is written: no run dir
    return model_init.build_model(request, config.model.num_classes)


def synthetic_batches(args: argparse.Namespace, rank: int, device: torch.device) -> Batches:
    gen = torch.Generator().manual_seed(args.seed * 1_000_003 + rank)
    shape = (args.num_batches, args.micro_batch)
    x = torch.randn(*shape, 3, args.img_size, args.img_size, generator=gen).to(device)
    y = torch.randint(0, args.num_classes, shape, generator=gen).to(device)
    return list(zip(x.unbind(), y.unbind(), strict=True))


def build_ddp(config: StageConfig, device: torch.device):
    from torch.nn.parallel import DistributedDataParallel as DDP

    model = build_model(config).to(device).train()
    ddp = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    forward = torch.compile(ddp) if config.train.compile else ddp
    optimizer = build_optimizer(model, config.optim, on_gpu=device.type == "cuda")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.train.autocast)

    def step(micro_batches: Batches) -> torch.Tensor:
        for i, (images, labels) in enumerate(micro_batches):
            with ddp.no_sync() if i < len(micro_batches) - 1 else nullcontext(), autocast:
                loss = classification_loss(forward(images), labels, kind=config.train.loss)
            (loss / len(micro_batches)).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step, optimizer, None


def build_zero(config: StageConfig, ctx: DistContext):
    from pipelines.train.engine import DeepSpeedEngine

    engine = DeepSpeedEngine(config, build_model(config), ctx)
    engine.train()

    def step(micro_batches: Batches) -> torch.Tensor:
        for images, labels in micro_batches:  # as the training loop does
            loss = classification_loss(engine(images), labels, kind=config.train.loss)
            engine.backward(loss)
            engine.step()
        return loss.detach()

    return step, getattr(engine.optimizer, "optimizer", engine.optimizer), engine.ds_config


def barrier(device: torch.device) -> None:
    sync(device)
    dist.barrier(device_ids=[device.index]) if device.type == "cuda" else dist.barrier()


def bench(args: argparse.Namespace, ctx: DistContext, device: torch.device) -> dict[str, Any]:
    """Every variant built, warmed up and timed interleaved; the per-variant numbers."""
    batches = synthetic_batches(args, ctx.rank, device)
    accum = job_config(args, zero_stage=0).grad_accum_steps(args.nprocs)
    cursor = 0
    log = progress if ctx.is_main else (lambda message: None)

    def next_batches() -> Batches:  # the same sequence for every variant
        nonlocal cursor
        cursor += 1
        return [batches[(cursor * accum + i) % len(batches)] for i in range(accum)]

    built: dict[str, tuple] = {}
    for name in args.variants:
        stage, config = VARIANTS[name], job_config(args, zero_stage=VARIANTS[name] or 0)
        start = time.perf_counter()
        built[name] = build_ddp(config, device) if stage is None else build_zero(config, ctx)
        log(f"built {name} in {time.perf_counter() - start:.1f} s")
    losses: dict[str, torch.Tensor] = {}
    for name, (step, *_) in built.items():
        cursor = 0
        for _ in range(args.warmup):
            losses[name] = step(next_batches())
        barrier(device)
    wall: dict[str, list[float]] = {name: [] for name in built}
    cpu: dict[str, list[float]] = {name: [] for name in built}
    for r in range(args.rounds):
        for name, (step, *_) in built.items():
            cursor = args.warmup + r * args.steps
            barrier(device)
            start, cpu_start = time.perf_counter(), time.process_time()
            for _ in range(args.steps):
                losses[name] = step(next_batches())
            barrier(device)
            wall[name].append((time.perf_counter() - start) / args.steps)
            cpu[name].append((time.process_time() - cpu_start) / args.steps)
        log(f"round {r + 1}/{args.rounds} done")
    mine = {
        name: (wall[name], cpu[name], float(losses[name]), optimizer_state_bytes(b[1]))
        for name, b in built.items()
    }
    ranks: list[Any] = [None] * args.nprocs
    dist.all_gather_object(ranks, mine)  # outside the timed windows
    # Per round the slowest rank's wall time; CPU time, last loss and optimizer state: means.
    return {
        name: {
            "wall_s": [max(w) for w in zip(*(r[name][0] for r in ranks), strict=True)],
            "cpu_s": [statistics.fmean(c) for c in zip(*(r[name][1] for r in ranks), strict=True)],
            "last_loss": statistics.fmean(r[name][2] for r in ranks),
            "opt_state_bytes": statistics.fmean(r[name][3] for r in ranks),
            "ds_config": built[name][2],
        }
        for name in built
    }


def report_rows(result: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    """One row per variant against DDP; prints the table and the goal line."""
    walls = compare_windows({name: v["wall_s"] for name, v in result.items()}, "ddp")
    cpus = compare_windows({name: v["cpu_s"] for name, v in result.items()}, "ddp")
    rows = [
        {
            "variant": name,
            "zero_stage": VARIANTS[name],
            **{k.replace("_s", "_ms"): t * 1e3 for k, t in walls[name].items() if k.endswith("_s")},
            "img_per_s": args.global_batch / walls[name]["median_s"],
            "ratio": walls[name]["ratio"],
            "paired_ratio": walls[name]["paired_ratio"],
            "cpu_ratio": cpus[name]["ratio"],
            "loss_diff": abs(v["last_loss"] - result["ddp"]["last_loss"]),
            **v,
        }
        for name, v in result.items()
    ]
    header = ["variant", "ZeRO", "step ms", "min", "max", "img/s", "CPU x DDP", "opt MiB/rank"]
    header += ["x DDP", "paired x DDP", "last loss", "|dloss| vs DDP"]
    cells = [
        [r["variant"], "-" if r["zero_stage"] is None else str(r["zero_stage"])]
        + [f"{r[k]:.1f}" for k in ("median_ms", "min_ms", "max_ms", "img_per_s")]
        + [f"{r['cpu_ratio']:.3f}", f"{r['opt_state_bytes'] / 2**20:.2f}", f"{r['ratio']:.3f}"]
        + [f"{r['paired_ratio']:.3f}", f"{r['last_loss']:.6f}", f"{r['loss_diff']:.2e}"]
        for r in rows
    ]
    print(format_table(header, cells))
    print("x DDP: median / DDP's median; paired: median of per-round ratios; lower is better")
    goal = {r["variant"]: r["ratio"] for r in rows if r["variant"] in GOAL_VARIANTS}
    print_goal(f"ZeRO-1/2 <= {GOAL_RATIO}x DDP", goal, GOAL_RATIO)
    return rows


def run_rank(args: argparse.Namespace) -> None:
    """One torchrun rank: process group, the benchmark, and (rank 0) the report."""
    started = time.perf_counter()
    rank, local = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    os.environ.setdefault("DS_ACCELERATOR", args.device)
    os.environ.setdefault("LOCAL_SIZE", os.environ["LOCAL_WORLD_SIZE"])  # DeepSpeed's CPU count
    device = torch.device("cuda", local) if args.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.set_num_threads(args.threads)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    ctx = DistContext(rank=rank, world_size=args.nprocs, local_rank=local, device=device.type)
    import deepspeed

    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    try:
        report = run_header(device, deepspeed=deepspeed.__version__) if rank == 0 else {}
        result = bench(args, ctx, device)
    finally:
        release_deepspeed_shm(rank)
        end_process_group()
    if rank != 0:
        return
    print(
        f"{args.nprocs} ranks, torch threads per process: {args.threads} | {args.model} at "
        f"{args.img_size} px, micro batch {args.micro_batch}, global {args.global_batch} | both "
        f"sides: {args.precision}{' autocast' if args.precision == 'bf16' else ''}, compile "
        f"{args.compile}, AdamW, clip 1.0 | {args.rounds} rounds x {args.steps} steps"
    )
    report.update(args={k: str(v) for k, v in vars(args).items()})
    report["rows"] = report_rows(result, args)
    finish_report(report, started, args.json)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if "LOCAL_RANK" in os.environ:
        run_rank(args)
        return 0
    # Started directly: torchrun starts the ranks, rendezvous on the loopback only.
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1"]
    command += [f"--nproc-per-node={args.nprocs}", "--master-addr=127.0.0.1"]
    command += [f"--master-port={free_loopback_port()}", __file__]
    return subprocess.run([*command, *(sys.argv[1:] if argv is None else argv)]).returncode


if __name__ == "__main__":
    sys.exit(main())
