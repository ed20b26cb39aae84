"""Ray Train's torch backend for local mode: the same process group, but the ranks meet through a
`FileStore` (no TCPStore, which would listen on every interface); see `launch/processes/loopback.py`.
Imported only where Ray Train is used."""

from __future__ import annotations

import contextlib
import ipaddress
import os
from dataclasses import dataclass
from datetime import timedelta

import ray
import ray.train
import torch.distributed as dist
from ray.train.torch import TorchConfig
from ray.train.torch.config import _TorchBackend

from launch.processes.loopback import LOOPBACK, file_init_method
from launch.processes.ports import free_loopback_port


def join_process_group(
    backend: str, world_rank: int, world_size: int, url: str, port: int, timeout_s: int
) -> None:
    """On each worker: torch's launcher env vars, as Ray Train sets them, then the group."""
    context = ray.train.get_context()
    os.environ.update(
        {
            "LOCAL_RANK": str(context.get_local_rank()),
            "LOCAL_WORLD_SIZE": str(context.get_local_world_size()),
            "NODE_RANK": str(context.get_node_rank()),
            "RANK": str(world_rank),
            "WORLD_SIZE": str(world_size),
            # Nothing listens here: DeepSpeed wants both set, and its CPU shared-memory
            # all-reduce names its segments after them, so a fresh port keeps jobs apart.
            "MASTER_ADDR": LOOPBACK,
            "MASTER_PORT": str(port),
        }
    )
    if backend == "nccl":
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    dist.init_process_group(
        backend=backend,
        init_method=url,
        rank=world_rank,
        world_size=world_size,
        timeout=timedelta(seconds=timeout_s),
    )


class FileRendezvousBackend(_TorchBackend):
    """Ray Train's torch backend with a FileStore rendezvous; shutdown is Ray's own, then the
    rendezvous file goes."""

    _files: list[str] = []

    def on_start(self, worker_group, backend_config) -> None:
        backend = backend_config.backend or "gloo"
        world_size = len(worker_group)
        url, port = file_init_method(backend_config.rendezvous_dir), free_loopback_port()
        self._files = [*self._files, url.removeprefix("file://")]
        ray.get(
            [
                worker_group.execute_single_async(
                    rank,
                    join_process_group,
                    backend=backend,
                    world_rank=rank,
                    world_size=world_size,
                    url=url,
                    port=port,
                    timeout_s=backend_config.timeout_s,
                )
                for rank in range(world_size)
            ]
        )

    def on_shutdown(self, worker_group, backend_config) -> None:
        try:
            super().on_shutdown(worker_group, backend_config)
        finally:
            for path in self._files:
                with contextlib.suppress(OSError):
                    os.unlink(path)
            self._files = []


@dataclass
class LoopbackTorchConfig(TorchConfig):
    """`TorchConfig` for local mode: every rank on this machine, no socket beyond loopback;
    the rendezvous file lives in `rendezvous_dir` (default: the temp dir)."""

    rendezvous_dir: str | None = None

    @property
    def backend_cls(self):
        return FileRendezvousBackend


def ray_is_loopback_only() -> bool:
    """Whether every live node of the connected Ray is this machine on 127.0.0.1 (local mode, or a
    Ray started by tests/notebooks that way): only then can the ranks share a FileStore."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    return bool(nodes) and all(
        ipaddress.ip_address(n["NodeManagerAddress"]).is_loopback for n in nodes
    )
