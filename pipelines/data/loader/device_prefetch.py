"""Batches copied to the accelerator one step ahead, so the host-to-device copy overlaps the
step that is running instead of preceding the next one."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch

Batch = dict[str, Any]


def prefetched(batches: Iterable[Batch], device: torch.device) -> Iterator[Batch]:
    """Yield each batch already on `device`; the copy of the next one is issued (non-blocking,
    on a side CUDA stream) before the current one is handed out."""
    stream = torch.cuda.Stream(device) if device.type == "cuda" else None
    iterator = iter(batches)
    upcoming = _issue(next(iterator, None), device, stream)
    while upcoming is not None:
        current = upcoming
        upcoming = _issue(next(iterator, None), device, stream)
        yield _ready(current, device, stream)


def _issue(batch: Batch | None, device: torch.device, stream) -> Batch | None:
    if batch is None:
        return None
    with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
        return {
            k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
            for k, v in batch.items()
        }


def _ready(batch: Batch, device: torch.device, stream) -> Batch:
    """Make the compute stream wait for the copy, and keep the memory alive for it."""
    if stream is None:
        return batch
    current = torch.cuda.current_stream(device)
    current.wait_stream(stream)
    for value in batch.values():
        if isinstance(value, torch.Tensor):
            value.record_stream(current)
    return batch
