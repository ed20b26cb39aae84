"""Host syncs per training step through our DeepSpeed engine, per ZeRO stage, and where they are.

A host sync is the host waiting for the device: reading a tensor's value into Python (`item`,
`bool`, `float`, `tolist`, `.cpu()`, ...) or an op whose output size depends on the values
(`nonzero`). This script counts the calls that do it, with their call site, during optimizer
steps shaped as the training loop's (engine forward, loss, `engine.backward`, `engine.step`,
the loss summed on the device). On CUDA only reads of CUDA tensors count, and torch's sync
debug mode gives the ground truth. On a CPU every tensor is a host tensor, so the list there is
a superset: it also names reads that stay on the host on a GPU (torch optimizers' step counters,
which fused AdamW does not read at all); `.to(device)` is not counted there.

    .venv/bin/python benchmarks/host_syncs.py                    # CPU, ZeRO 0-3, tiny ViT, fp32
    python benchmarks/host_syncs.py --device cuda --precision bf16 --json out.json
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from _deepspeed_shm import release_deepspeed_shm
from _measure import cuda_syncs
from _report import finish_report, run_header
from torch.overrides import TorchFunctionMode

import vit_core
from launch.processes.launchers import end_process_group
from launch.processes.ports import free_loopback_port
from pipelines.config import config_from_dict
from pipelines.distributed import DistContext

Tensor = torch.Tensor
# Python-level reads of a tensor's value, and ops whose output shape depends on the values.
READS = {
    Tensor.item: "item",
    Tensor.tolist: "tolist",
    Tensor.__bool__: "bool",
    Tensor.__float__: "float",
    Tensor.__int__: "int",
    Tensor.__index__: "index",
    Tensor.numpy: "numpy",
    Tensor.cpu: "cpu",
    Tensor.nonzero: "nonzero",
    torch.nonzero: "nonzero",
    torch.masked_select: "masked_select",
    torch.unique: "unique",
}
_HERE = {os.path.dirname(torch.__file__), os.path.dirname(__file__)}


class HostReads(TorchFunctionMode):
    """Counts READS calls and their first call site outside torch, while active. With `only`
    set (a CUDA run), only reads of tensors on that device type count: `item()` of a CPU
    tensor (e.g. torch optimizers' step counters) waits for nothing."""

    def __init__(self, only: str | None = None) -> None:
        super().__init__()
        self.only = only
        self.sites: collections.Counter[str] = collections.Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = READS.get(func)
        if name is None and func is Tensor.to and self.only and _to_cpu(args, kwargs):
            name = "to(cpu)"
        first = args[0] if args else None
        on = first.device.type if isinstance(first, Tensor) else None
        if name is not None and (self.only is None or on == self.only):
            self.sites[f"{name} at {_call_site()}"] += 1
        return func(*args, **kwargs)


def _to_cpu(args: tuple, kwargs: dict) -> bool:
    target = kwargs.get("device", args[1] if len(args) > 1 else None)
    return isinstance(target, str | torch.device) and torch.device(target).type == "cpu"


def _call_site() -> str:
    for frame in reversed(traceback.extract_stack()[:-2]):
        if not any(frame.filename.startswith(here) for here in _HERE):
            path = frame.filename.split("site-packages/")[-1].removeprefix(os.getcwd() + "/")
            return f"{path}:{frame.lineno} ({frame.name})"
    return "?"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--stages", type=int, nargs="+", default=[0, 1, 2, 3])
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--steps", type=int, default=3, help="counted optimizer steps per stage")
    p.add_argument("--accum", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--json", type=Path, default=None, metavar="OUT")
    return p.parse_args(argv)


def count_stage(stage: int, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    from pipelines.train.engine import DeepSpeedEngine

    micro = 4
    raw = {
        "model": {"name": "vit_tiny_patch16", "img_size": 32, "patch_size": 8, "depth": 2},
        "deepspeed": {"zero_stage": stage, "precision": args.precision},
        "train": {"micro_batch_size": micro, "global_batch_size": micro * args.accum},
        "cluster": {"num_workers": 1, "use_gpu": device.type == "cuda"},
        "tracking": {"enabled": False},
    }
    raw["train"].update(compile=False, prefetch_to_device=False)
    config = config_from_dict(raw)
    torch.manual_seed(0)
    model = vit_core.create_model("vit_tiny_patch16", img_size=32, patch_size=8, depth=2)
    engine = DeepSpeedEngine(config, model, DistContext(device=device.type))
    x = torch.randn(micro, 3, 32, 32, device=device)
    y = torch.randint(0, 1000, (micro,), device=device)
    loss_sum = torch.zeros((), device=device)

    def step() -> None:
        for _ in range(args.accum):
            loss = torch.nn.functional.cross_entropy(engine(x).float(), y)
            engine.backward(loss)
            engine.step()
            loss_sum.add_(loss.detach())

    step()  # the first step allocates and may sync once
    reads = HostReads(only="cuda" if device.type == "cuda" else None)
    with cuda_syncs(device) as syncs, reads:
        for _ in range(args.steps):
            step()
    return {
        "zero_stage": stage,
        "optimizer": type(engine._engine.optimizer).__name__,
        "reads_per_step": sum(reads.sites.values()) / args.steps,
        "sites": {site: n / args.steps for site, n in reads.sites.most_common()},
        "cuda_syncs_per_step": None if syncs.count is None else syncs.count / args.steps,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = torch.device(args.device)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_loopback_port()))
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_SIZE="1")
    os.environ.setdefault("DS_ACCELERATOR", args.device)
    if device.type == "cuda":
        torch.cuda.set_device(0)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)
    import deepspeed

    report = run_header(device, deepspeed=deepspeed.__version__)
    started = time.perf_counter()
    try:
        rows = [count_stage(stage, args, device) for stage in args.stages]
    finally:
        release_deepspeed_shm(0)
        end_process_group()
    print(f"{args.precision}, {args.accum} micro-batch(es) per step, {args.steps} steps counted")
    for row in rows:
        cuda = row["cuda_syncs_per_step"]
        extra = "" if cuda is None else f", {cuda:g} reported by torch.cuda sync debug mode"
        print(
            f"ZeRO-{row['zero_stage']} ({row['optimizer']}): {row['reads_per_step']:g} host "
            f"reads per optimizer step{extra}"
        )
        for site, n in row["sites"].items():
            print(f"    {n:g} x {site}")
    report["rows"] = rows
    finish_report(report, started, args.json)
    return report


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
