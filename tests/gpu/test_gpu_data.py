"""On one GPU: nvJPEG decode + crop equal to the CPU decode within 2/255, labels on the device,
no host sync in the decoder's own code, and prefetch's per-batch event (batch k never waits for
the copy of batch k+1). Marked `gpu`: skipped without CUDA."""

from __future__ import annotations

import io
import time

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def _jpegs(n: int, seed: int = 0) -> list[torch.Tensor]:
    from PIL import Image

    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        h, w = 48 + 16 * (i % 3), 64 + 8 * i
        base = torch.rand(3, 1, 1, generator=gen) * 255  # smooth: JPEG is near-lossless on it
        ramp = torch.linspace(0, 60, w).view(1, 1, w) + torch.linspace(0, 40, h).view(1, h, 1)
        pixels = (base + ramp).clamp(0, 255).to(torch.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(buf, format="JPEG", quality=95)
        out.append(torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8))
    return out


def _batch(encoded: list[torch.Tensor]) -> dict:
    boxes = [[4, 2, 40, 56, i % 2] for i in range(len(encoded))]
    return {
        "encoded": list(encoded),
        "box": torch.tensor(boxes),
        "label": torch.arange(len(encoded)),
        "valid": torch.ones(len(encoded), dtype=torch.bool),
        "key": [str(i) for i in range(len(encoded))],
    }


def test_device_decode_equals_cpu_decode_within_2_levels():
    from pipelines.data.loader.device_decode import DeviceDecoder

    encoded = _jpegs(8)
    cuda = torch.device("cuda")
    args = dict(img_size=32, mean=(0.0,) * 3, std=(1.0,) * 3, train=False)
    on_gpu = DeviceDecoder(cuda, **args)(_batch(encoded))
    on_cpu = DeviceDecoder(torch.device("cpu"), **args)(_batch(encoded))
    assert on_gpu["label"].is_cuda and on_gpu["valid"].is_cuda and on_gpu["image"].is_cuda
    diff = (on_gpu["image"].cpu() - on_cpu["image"]).abs()
    print(
        f"nvJPEG vs libjpeg after the same crop: mean {diff.mean() * 255:.3f}, max {diff.max() * 255:.2f} levels"
    )
    assert diff.mean() <= 2 / 255


def test_the_decoder_makes_no_host_sync_of_its_own():
    """torch's sync debug mode raises on any synchronising call made through torch (nvJPEG's
    wait on its own stream is not one: it blocks only the staging thread)."""
    from pipelines.data.loader.device_decode import DeviceDecoder

    decoder = DeviceDecoder(torch.device("cuda"), 32, (0.5,) * 3, (0.5,) * 3, train=True)
    decoder(_batch(_jpegs(4)))  # first call: nvJPEG handles, pinned buffers
    batch = _batch(_jpegs(4, seed=1))
    torch.cuda.set_sync_debug_mode("error")
    try:
        decoder(batch)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_prefetch_hands_out_batch_k_without_waiting_for_the_copy_of_k_plus_1():
    """Staging of batch 1 is held on its side stream behind a long sleep kernel; batch 0 must
    be usable at once (the compute stream waits on batch 0's event only)."""
    from pipelines.data.loader.device_prefetch import prefetched

    cuda = torch.device("cuda")
    slow = {"n": 0}

    def stage(batch):
        slow["n"] += 1
        if slow["n"] == 2:  # the staging of batch 1: ~1 s of GPU time on the side stream
            torch.cuda._sleep(2_000_000_000)
        return {k: v.to(cuda, non_blocking=True) for k, v in batch.items()}

    host = ({"x": torch.full((4,), float(i)).pin_memory()} for i in range(3))
    batches = prefetched(host, stage, cuda)
    first = next(batches)
    start = time.perf_counter()
    (first["x"] + 1).sum()
    ready = torch.cuda.Event()
    ready.record()
    ready.synchronize()
    waited = time.perf_counter() - start
    assert waited < 0.3, f"batch 0's step waited {waited:.2f} s for batch 1's staging"
    assert [float(b["x"][0]) for b in batches] == [1.0, 2.0]  # order kept
