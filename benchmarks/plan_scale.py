"""Seconds and memory of the training loader's epoch plan at 10^7..10^9 samples, per process.

Synthetic manifests (no files): `--shards` shards (100k) holding 10^7, 10^8 and 10^9 samples, a
topology of `--world` ranks x `--workers` dataloader workers (1024 x 8). Three steps, each in a
fresh process so that its peak RSS is its own:

  plan      plan the epoch (what every rank does, and what it pickles to its workers)
  consumer  that, then one consumer's plan (what each dataloader worker computes for itself)
  resume    the epoch stopped at half its batches, resumed at `--resume-world` ranks (896):
            plan the re-split and one new consumer's plan

Each row gives the step's own seconds and the process's peak RSS above its baseline (the
interpreter with numpy and the plan imported, before the manifest exists), the bytes a
dataloader worker receives (the pickled plan), and, where `--baseline-max` allows, the same for
vitpipe 0.2's plan (`tests/fixtures/read_plan_0_2.py`: a position array per process and a replay
of every old consumer) with the ratio old / new.

    .venv/bin/python benchmarks/plan_scale.py                           # ~3 min on 2 cores
    .venv/bin/python benchmarks/plan_scale.py --sizes 1e7 --baseline-max 1e7
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "tests" / "fixtures")]

STEPS = ("plan", "consumer", "resume")
GOAL_SECONDS, GOAL_MB = 10.0, 500.0


def _status_mb(field: str) -> float:
    """A memory line of /proc/self/status in MB. Not `ru_maxrss`: Linux carries that over a
    fork and exec, so a child of a large parent would report the parent's peak."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"no {field} in /proc/self/status (Linux only)")


def measure(step: str, impl: str, args: argparse.Namespace) -> dict[str, float]:
    """One step in this (fresh) process: its seconds, peak RSS above the baseline, bytes sent."""
    import numpy as np  # noqa: F401  (part of the baseline)

    if impl == "old":
        import read_plan_0_2 as plan_module
    else:
        from pipelines.data.loader import read_plan as plan_module
    from pipelines.data.manifest import ShardInfo

    baseline = _status_mb("VmRSS")
    per_shard, extra = divmod(int(args.samples), args.shards)
    shards = [
        ShardInfo(f"train-{i:06d}.tar", per_shard + (i < extra), 1 << 30, "0" * 64)
        for i in range(args.shards)
    ]
    old = plan_module.Topology(args.world, args.workers, args.micro_batch, args.buffer)
    new = plan_module.Topology(args.resume_world, args.workers, args.micro_batch, args.buffer)
    kw = dict(seed=0, epoch=3)
    start = time.perf_counter()
    plan = plan_module.plan_train_epoch(shards, topology=old, **kw)
    seconds = time.perf_counter() - start
    if step != "plan":
        start = time.perf_counter()
        if step == "resume":
            history = [plan_module.Segment(old, plan.batches_per_rank // 2)]
            plan = plan_module.plan_train_epoch(shards, topology=new, history=history, **kw)
        consumer = plan.consumer(plan.topology.world_size - 1, args.workers // 2)
        seconds = time.perf_counter() - start
        assert len(consumer.positions) and consumer.num_real == plan.per_consumer
    sent = len(pickle.dumps(plan, protocol=pickle.HIGHEST_PROTOCOL))
    return {"seconds": seconds, "rss_mb": _status_mb("VmHWM") - baseline, "sent_mb": sent / 2**20}


def _child(step: str, impl: str, samples: float, args: argparse.Namespace) -> dict | str:
    cmd = [sys.executable, __file__, "--step", step, "--impl", impl, "--samples", str(samples)]
    for name in ("shards", "world", "workers", "resume_world", "micro_batch", "buffer"):
        cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return f"over {args.timeout} s"
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        return lines[-1][:60] if lines else f"exit {done.returncode}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1e7,1e8,1e9", help="samples per manifest")
    parser.add_argument("--shards", type=int, default=100_000)
    parser.add_argument("--world", type=int, default=1024)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--resume-world", type=int, default=896)
    parser.add_argument("--micro-batch", type=int, default=64)
    parser.add_argument("--buffer", type=int, default=1000, help="data.shuffle_buffer")
    parser.add_argument("--baseline-max", type=float, default=1e7, help="largest size for 0.2")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per step")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--step", choices=STEPS, help=argparse.SUPPRESS)
    parser.add_argument("--impl", choices=("new", "old"), default="new", help=argparse.SUPPRESS)
    parser.add_argument("--samples", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        print(json.dumps(measure(args.step, args.impl, args)))
        return
    # The parent only: the report helpers import torch, which the measured children must not.
    from _report import command_line, format_table, write_json

    print(f"command: {command_line()}")
    print(f"load average at start: {_load()}")
    started, rows, table = time.perf_counter(), [], []
    for samples in (float(s) for s in args.sizes.split(",")):
        for step in STEPS:
            new = _child(step, "new", samples, args)
            old = _child(step, "old", samples, args) if samples <= args.baseline_max else None
            rows.append({"samples": samples, "step": step, "new": new, "old": old})
            table.append(_row(samples, step, new, old))
            print(f"  {samples:.0e} {step}: {new} | 0.2: {old}", file=sys.stderr, flush=True)
    header = ["samples", "step", "seconds", "peak RSS MB", "worker gets MB"]
    header += ["0.2 seconds", "0.2 RSS MB", "0.2 worker gets MB", "0.2/new seconds", "0.2/new RSS"]
    print(format_table(header, table))
    resume = [r["new"] for r in rows if r["step"] == "resume" and isinstance(r["new"], dict)]
    if resume and rows[-1]["samples"] >= 1e9:
        worst = resume[-1]
        met = worst["seconds"] < GOAL_SECONDS and worst["rss_mb"] < GOAL_MB
        print(
            f"goal resume at {rows[-1]['samples']:.0e} samples < {GOAL_SECONDS:.0f} s and "
            f"< {GOAL_MB:.0f} MB per process: {'met' if met else 'NOT met'} "
            f"({worst['seconds']:.2f} s, {worst['rss_mb']:.0f} MB)"
        )
    print(f"total {time.perf_counter() - started:.0f} s, load average at end: {_load()}")
    if args.json:
        write_json({"command": command_line(), "rows": rows}, args.json)


def _load() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def _row(samples: float, step: str, new: dict | str, old: dict | str | None) -> list[str]:
    def cells(m: dict | str | None) -> list[str]:
        if m is None:
            return ["-", "-", "-"]
        if isinstance(m, str):
            return [m, "-", "-"]
        return [f"{m['seconds']:.2f}", f"{m['rss_mb']:.0f}", f"{m['sent_mb']:.1f}"]

    ratios = ["-", "-"]
    if isinstance(new, dict) and isinstance(old, dict):
        ratios = [
            f"{old['seconds'] / max(new['seconds'], 1e-4):.3g}x",
            f"{old['rss_mb'] / max(new['rss_mb'], 1.0):.3g}x",
        ]
    return [f"{samples:.0e}", step, *cells(new), *cells(old), *ratios]


if __name__ == "__main__":
    main()
