"""Batches made ready on the accelerator one step ahead: copied (uint8, a quarter of the bytes of
float32), normalised, or decoded there, while the step that uses the previous batch runs.

The staging of batch k+1 runs in a background thread on a side CUDA stream and ends by
recording an event; handing out batch k makes the compute stream wait on batch k's event only
(never on the side stream as a whole, which would also wait for the copy of k+1). The tensors
are marked as used by the compute stream (`record_stream`), so the caching allocator does not
hand their memory to the side stream's next batch before the step is done with them. Staging
in a thread also keeps the host's own waits (nvJPEG blocks the calling thread until its decode
is done) off the thread that launches the step's kernels. On a CPU device the same thread runs
the staging, without streams.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from pipelines.data.loader.transforms import Normalize

Batch = dict[str, Any]
Stage = Callable[[Batch], Batch]


class DeviceBatch:
    """A host batch with a uint8 `image` -> the same batch on `device`, every tensor copied
    non-blocking (pinned memory: asynchronous), the image normalised to float32 after the copy
    with `Normalize`'s arithmetic (bit-identical to normalising on the CPU first)."""

    def __init__(self, device: torch.device, mean: Sequence[float], std: Sequence[float]):
        self.device = torch.device(device)
        self.normalize = Normalize(mean, std)

    def __call__(self, batch: Batch) -> Batch:
        out = {
            k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
            for k, v in batch.items()
        }
        if out["image"].dtype == torch.uint8:
            out["image"] = self.normalize.batch(out["image"])
        return out


@dataclass
class _Staged:
    batch: Batch
    ready: torch.cuda.Event | None  # recorded on the side stream after this batch's staging


def prefetched(batches: Iterable[Batch], stage: Stage, device: torch.device) -> Iterator[Batch]:
    """Yield `stage(batch)` for each batch, staged one batch ahead (see the module docstring).

    `next()` on the host batches stays in the calling thread (the dataloader's iterator is not
    thread-safe); only `stage` runs in the background thread."""
    device = torch.device(device)
    stream = torch.cuda.Stream(device) if device.type == "cuda" else None
    iterator = iter(batches)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="device-prefetch") as pool:

        def submit(batch: Batch | None) -> Future[_Staged] | None:
            return None if batch is None else pool.submit(_stage, stage, batch, device, stream)

        pending = submit(next(iterator, None))
        try:
            while pending is not None:
                staged = pending.result()
                pending = submit(next(iterator, None))
                yield _ready(staged, device)
        finally:
            if pending is not None:
                pending.cancel()


def _stage(stage: Stage, batch: Batch, device: torch.device, stream) -> _Staged:
    if stream is None:
        return _Staged(stage(batch), None)
    # The current device and stream are per thread: set both here.
    with torch.cuda.device(device), torch.cuda.stream(stream):
        out = stage(batch)
        event = torch.cuda.Event()
        event.record(stream)
    return _Staged(out, event)


def _ready(staged: _Staged, device: torch.device) -> Batch:
    """Make the compute stream wait for this batch's staging only, and keep its memory alive
    for the compute stream."""
    if staged.ready is None:
        return staged.batch
    current = torch.cuda.current_stream(device)
    current.wait_event(staged.ready)
    for value in staged.batch.values():
        if isinstance(value, torch.Tensor) and value.device.type == "cuda":
            value.record_stream(current)
    return staged.batch
