"""How training processes are started. This is the only place that knows: Ray Train's
TorchTrainer (default), one local process, or one process per rank under `torchrun`.

Under `torchrun` (`--launcher local` with RANK/WORLD_SIZE set) only rank 0 drives the stage
(MLflow run, summary.json); the other ranks only train.
"""

from __future__ import annotations

import os
import threading
import time
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from launch.processes.capacity import check_capacity, worker_bundle
from launch.processes.loopback import LOOPBACK, file_init_method, worker_env
from launch.processes.ports import free_loopback_port
from launch.terminal.logs import configure_logging
from pipelines.config import StageConfig
from pipelines.distributed import DistContext
from pipelines.errors import VitpipeError
from pipelines.layout import WORKER_RESULT
from pipelines.numerics import pin_threads
from pipelines.train.request import TrainRequest
from pipelines.train.trainer import Trainer

LAUNCHERS = ("ray", "local")


def is_driver(launcher: str) -> bool:
    """Whether this process drives the stage: always under Ray (its driver does not train);
    under torchrun only rank 0."""
    return launcher == "ray" or int(os.environ.get("RANK", "0")) == 0


def world_size(launcher: str, config: StageConfig) -> int:
    if launcher == "ray":
        return config.cluster.num_workers
    return int(os.environ.get("WORLD_SIZE", "1"))


def end_process_group(grace_s: float = 0.2) -> None:
    """Destroy this process's group, then sleep a moment with the GIL released, before the
    interpreter shuts down. gloo's worker threads drop the tensors of the last collective after
    it completes; one that needs the GIL once finalization has begun aborts the whole process
    ("terminate called without an active exception", pytorch/pytorch#190489), and torchrun
    then reports a finished job as failed. Call it only when the process is about to exit, after
    a job that ended well (a failed rank's peers may still be inside a collective): DeepSpeed
    caches the group, so a later job in the same process could not use a new one."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    dist.destroy_process_group()
    time.sleep(grace_s)


def run_local(request: TrainRequest) -> dict[str, Any] | None:
    """This process trains: rank/world from torchrun's environment, else a 1-process group.
    Returns rank 0's result; None on the other ranks."""
    use_gpu = request.config.cluster.use_gpu
    pin_threads(request.config.cluster, ray_worker=False)
    env = os.environ
    init_method = None  # torchrun's (or the launcher's) env:// rendezvous
    if "RANK" in env and "WORLD_SIZE" in env:
        rank, world, local_rank = (
            int(env["RANK"]),
            int(env["WORLD_SIZE"]),
            int(env.get("LOCAL_RANK", 0)),
        )
    else:
        rank, world, local_rank = 0, 1, 0
        env.setdefault("MASTER_ADDR", LOOPBACK)
        env.setdefault("MASTER_PORT", str(free_loopback_port()))
        # DeepSpeed reads these even for one process.
        env.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
        env.update(worker_env())
        # One process: a FileStore, since torch's TCPStore would listen on every interface.
        init_method = file_init_method()
    if use_gpu:
        if not torch.cuda.is_available():
            raise VitpipeError("cluster.use_gpu=true but CUDA is not available in this process")
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        # Kept for the life of the process: DeepSpeed caches the group, so a second job in the
        # same process (tests, notebooks, `vitpipe run`) must find the same one.
        dist.init_process_group(
            "nccl" if use_gpu else "gloo",
            init_method=init_method,
            rank=rank,
            world_size=world,
            timeout=timedelta(seconds=request.config.cluster.collective_timeout_s),
        )
    ctx = DistContext(
        rank=rank, world_size=world, local_rank=local_rank, device="cuda" if use_gpu else "cpu"
    )
    result = Trainer(request, ctx).fit()
    return result.to_summary() if result is not None else None


def run_ray(request: TrainRequest) -> dict[str, Any]:
    """Ray Train: `cluster.num_workers` workers, gloo on CPU and NCCL on GPU, restarts on failure.
    A restarted (or resized) worker group runs `_ray_worker` with this same request: its launch
    id lets the Checkpointer continue from what this launch saved, not from the driver's choice."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from launch.processes.loopback_train import LoopbackTorchConfig, ray_is_loopback_only

    check_capacity(request.config)  # fail in seconds when the cluster can never fit it
    cluster = request.config.cluster
    backend = "nccl" if cluster.use_gpu else "gloo"
    resources = worker_bundle(cluster)
    trainer = TorchTrainer(
        _ray_worker,
        train_loop_config={"request": request},
        # Local mode: a rendezvous that listens nowhere; a cluster: Ray's TCP one.
        torch_config=(
            LoopbackTorchConfig(
                backend=backend,
                rendezvous_dir=str(request.files().path("ray")),
                timeout_s=cluster.collective_timeout_s,
            )
            if not cluster.address and ray_is_loopback_only()
            else TorchConfig(backend=backend, timeout_s=cluster.collective_timeout_s)
        ),
        # An elastic range (min, max): Ray restarts the group on the workers it can get.
        scaling_config=ScalingConfig(
            num_workers=cluster.scaling_num_workers,
            use_gpu=cluster.use_gpu,
            resources_per_worker=resources,
        ),
        run_config=RunConfig(
            name=f"{request.config.name}-{request.stage}",
            storage_path=cluster.storage_path or request.files().at("ray").uri,
            failure_config=FailureConfig(max_failures=cluster.restarts_allowed),
            # Our sharded checkpoints live in the run dir; Ray keeps none of its own.
            checkpoint_config=CheckpointConfig(num_to_keep=None),
        ),
    )
    try:
        _fit_off_the_main_thread(trainer)
    except Exception as err:
        raise _worker_error(err) from None
    return _read_result(request)


def _fit_off_the_main_thread(trainer: Any) -> None:
    """`trainer.fit()` in a helper thread: on the main thread Ray Train installs its own SIGINT
    handler, which swallows Ctrl-C (the run goes on to the end); from here the driver's own
    handler turns it into a clean stop, like SIGTERM (and a second one aborts)."""
    outcome: dict[str, BaseException] = {}

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as err:  # handed to the main thread
            outcome["error"] = err

    thread = threading.Thread(target=fit, name="ray-train-fit", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(timeout=0.5)  # signal handlers run on the main thread between joins
    if "error" in outcome:
        raise outcome["error"]


def _ray_worker(loop_config: dict[str, Any]) -> None:
    import ray
    import ray.train

    configure_logging()
    request: TrainRequest = loop_config["request"]
    pin_threads(request.config.cluster, ray_worker=True)
    context = ray.train.get_context()
    ctx = DistContext(
        rank=context.get_world_rank(),
        world_size=context.get_world_size(),
        local_rank=context.get_local_rank(),
        device="cuda" if request.config.cluster.use_gpu else "cpu",
        node_id=ray.get_runtime_context().get_node_id(),
    )
    result = Trainer(request, ctx).fit()
    if result is not None:
        request.files(ctx.node_id).at(WORKER_RESULT).write_json_atomic(result.to_summary())


def _read_result(request: TrainRequest) -> dict[str, Any]:
    """What rank 0 left in run storage (it may have run on another node)."""
    stored = request.files().at(WORKER_RESULT)
    if not stored.is_file():
        raise VitpipeError(f"training finished without a result in {stored.uri}")
    return stored.read_json()


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
