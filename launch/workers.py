"""How training processes are started. This is the only place that knows: Ray Train's
TorchTrainer (default), one local process, or a process under `torchrun`."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

from pipelines.distributed import DistContext
from pipelines.errors import VitpipeError
from pipelines.numerics import pin_threads
from pipelines.train.request import TrainRequest

RESULT_FILE = "worker_result.json"


def run_local(request: TrainRequest) -> dict[str, Any]:
    """This process trains: rank/world from torchrun's environment, else a 1-process group."""
    import torch
    import torch.distributed as dist

    use_gpu = request.config.cluster.use_gpu
    pin_threads(request.config.cluster, ray_worker=False)
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        rank, world, local_rank = (
            int(env["RANK"]),
            int(env["WORLD_SIZE"]),
            int(env.get("LOCAL_RANK", 0)),
        )
    else:
        rank, world, local_rank = 0, 1, 0
        env.setdefault("MASTER_ADDR", "127.0.0.1")
        env.setdefault("MASTER_PORT", str(_free_port()))
        # DeepSpeed reads these even for one process.
        env.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
    if use_gpu:
        if not torch.cuda.is_available():
            raise VitpipeError("cluster.use_gpu=true but CUDA is not available in this process")
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        # Kept for the life of the process: DeepSpeed caches the group, so a second job in the
        # same process (tests, notebooks, `vitpipe run`) must find the same one.
        dist.init_process_group("nccl" if use_gpu else "gloo", rank=rank, world_size=world)
    ctx = DistContext(
        rank=rank, world_size=world, local_rank=local_rank, device="cuda" if use_gpu else "cpu"
    )
    result = _train_and_record(request, ctx)
    return result or read_result(request.run_dir)


def run_ray(request: TrainRequest) -> dict[str, Any]:
    """Ray Train: `cluster.num_workers` workers, gloo on CPU and NCCL on GPU, restarts on failure."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    cluster = request.config.cluster
    resources = {"CPU": cluster.cpus_per_worker, **cluster.resources_per_worker}
    if cluster.use_gpu:
        resources.setdefault("GPU", 1)
    trainer = TorchTrainer(
        _ray_worker,
        train_loop_config={"request": request},
        torch_config=TorchConfig(backend="nccl" if cluster.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=cluster.num_workers, use_gpu=cluster.use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=f"{request.config.name}-{request.stage}",
            storage_path=cluster.storage_path or str(request.run_dir / "ray"),
            failure_config=FailureConfig(max_failures=cluster.max_failures),
            # Our sharded checkpoints live in the run dir; Ray keeps none of its own.
            checkpoint_config=CheckpointConfig(num_to_keep=None),
        ),
    )
    try:
        trainer.fit()
    except Exception as err:
        raise _worker_error(err) from None
    return read_result(request.run_dir)


def _ray_worker(loop_config: dict[str, Any]) -> None:
    import ray.train

    request: TrainRequest = loop_config["request"]
    pin_threads(request.config.cluster, ray_worker=True)
    context = ray.train.get_context()
    ctx = DistContext(
        rank=context.get_world_rank(),
        world_size=context.get_world_size(),
        local_rank=context.get_local_rank(),
        device="cuda" if request.config.cluster.use_gpu else "cpu",
    )
    _train_and_record(request, ctx)


def _train_and_record(request: TrainRequest, ctx: DistContext) -> dict[str, Any] | None:
    import logging

    from pipelines.train.loop import train

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    result = train(request, ctx)
    if result is not None:
        path = request.run_dir / RESULT_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1, default=str))
        tmp.replace(path)
    return result


def read_result(run_dir: Path) -> dict[str, Any]:
    path = run_dir / RESULT_FILE
    if not path.is_file():
        raise VitpipeError(f"training finished without a result in {path}")
    return json.loads(path.read_text())


def _worker_error(err: BaseException) -> Exception:
    """The innermost cause of a Ray Train failure, as one line (a VitpipeError stays itself)."""
    seen: set[int] = set()
    stack: list[BaseException] = [err]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, VitpipeError):
            return current
        for attr in ("worker_failures", "errors"):
            failures = getattr(current, attr, None)
            if isinstance(failures, dict):
                stack.extend(v for v in failures.values() if isinstance(v, BaseException))
        for nested in (getattr(current, "cause", None), current.__cause__, current.__context__):
            if isinstance(nested, BaseException):
                stack.append(nested)
    message = str(err).strip().splitlines()
    return VitpipeError(f"training failed: {message[-1] if message else type(err).__name__}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
