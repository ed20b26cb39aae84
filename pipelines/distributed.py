"""What the training loop knows about the processes it runs in, and the few collectives it uses.

`launch/` decides how processes start (Ray Train, torchrun, one local process) and hands the loop a
`DistContext`; nothing under `pipelines/` inspects environment variables or Ray.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"
    node_id: str = "local"  # which machine: names this node's scratch dir and its metrics

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 and dist.is_available() and dist.is_initialized()

    def torch_device(self) -> torch.device:
        if self.device == "cuda":
            return torch.device("cuda", self.local_rank)
        return torch.device(self.device)

    def on_main(self, fn: Callable[[], T]) -> T | None:
        """Run a side effect (files, logging, tracking) on rank 0 only."""
        return fn() if self.is_main else None

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Sum a few floats over ranks (float64, on the collective's device)."""
        if not self.distributed:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self._collective_device())
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.tolist()

    def all_true(self, flag: bool) -> bool:
        """True only if every rank passes True (a MIN reduction)."""
        if not self.distributed:
            return flag
        tensor = torch.tensor(
            [1 if flag else 0], dtype=torch.int32, device=self._collective_device()
        )
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
        return bool(tensor.item())

    def any_true(self, flag: bool) -> bool:
        return not self.all_true(not flag)

    def all_gather_object(self, value: T) -> list[T]:
        """Every rank's `value`, in rank order, on every rank (picklable, small)."""
        if not self.distributed:
            return [value]
        out: list = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out

    def broadcast_object(self, value: T) -> T:
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def _collective_device(self) -> torch.device:
        return self.torch_device() if dist.get_backend() == "nccl" else torch.device("cpu")
