"""What the training process does to worker batches: uint8 images normalised after the copy to
the device (the same numbers as normalising on the CPU), staged one batch ahead in a thread
without losing the loader's position, and GPU decode's crop of each image on its own (edge
pixels repeat instead of blending with padding; memory bounded per image, not per batch).
Run here on the CPU device."""

from __future__ import annotations

import io
import threading

import pytest
import torch
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode

from pipelines.data.loader.device_decode import DeviceDecoder
from pipelines.data.loader.device_prefetch import DeviceBatch, prefetched
from pipelines.data.loader.transforms import Normalize

from shard_fixtures import make_loader, write_shard_set

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")
CPU = torch.device("cpu")
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    write_shard_set(root, {"train": [10, 10]}, image_format="jpeg", image_size=24)
    return root


def _epoch(loader) -> list[dict]:
    return list(loader)


def test_batch_normalise_is_bit_identical_to_the_per_image_one():
    images = torch.randint(0, 256, (4, 3, 9, 7), dtype=torch.uint8)
    normalize = Normalize(MEAN, STD)
    expected = torch.empty(4, 3, 9, 7)
    for image, out in zip(images, expected, strict=True):
        normalize(image, out)  # what the loader workers did before they sent uint8
    assert torch.equal(normalize.batch(images), expected)
    moved = DeviceBatch(CPU, MEAN, STD)(
        {"image": images, "label": torch.arange(4), "key": list("abcd")}
    )
    assert torch.equal(moved["image"], expected) and moved["key"] == list("abcd")


def test_workers_send_uint8_and_the_loader_yields_the_same_floats_staged_or_not(root):
    plain = _epoch(make_loader(root, num_workers=1, mean=MEAN, std=STD))
    staged = _epoch(make_loader(root, num_workers=1, mean=MEAN, std=STD, device=CPU))
    assert len(plain) == len(staged) == 5
    normalize = Normalize(MEAN, STD)
    for a, b in zip(plain, staged, strict=True):
        assert a["key"] == b["key"] and torch.equal(a["label"], b["label"])
        assert a["image"].dtype == torch.float32 and torch.equal(a["image"], b["image"])
        # every value is a normalised uint8 level: the workers' pixels, untouched
        levels = ((a["image"] - normalize.bias) / normalize.scale).round().clamp(0, 255)
        assert torch.equal(normalize.batch(levels.to(torch.uint8)), a["image"])


def test_staging_ahead_keeps_the_exact_position_for_a_resume(root):
    whole = _epoch(make_loader(root, num_workers=2, device=CPU))
    first = make_loader(root, num_workers=2, device=CPU)
    batches = iter(first)
    head = [next(batches), next(batches)]  # the third is already staged by now
    state = first.state_dict()
    assert state["position"] == 2
    batches.close()
    rest = make_loader(root, num_workers=2, device=CPU)
    rest.load_state_dict(state)
    tail = _epoch(rest)
    assert [b["key"] for b in head + tail] == [b["key"] for b in whole]
    for a, b in zip(head + tail, whole, strict=True):
        assert torch.equal(a["image"], b["image"])


def test_prefetch_stages_in_one_background_thread_in_order_and_reraises():
    threads = []

    def stage(batch):
        threads.append(threading.current_thread().name)
        if batch["i"] == 3:
            raise ValueError("bad batch 3")
        return {"i": batch["i"] * 10}

    out = prefetched(({"i": i} for i in range(5)), stage, CPU)
    assert [next(out)["i"] for _ in range(3)] == [0, 10, 20]
    with pytest.raises(ValueError, match="bad batch 3"):
        next(out)
    assert set(threads) == {"device-prefetch_0"}


def _png(pixels: torch.Tensor) -> torch.Tensor:
    buf = io.BytesIO()
    Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(buf, format="PNG")
    return torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)


def _decode(images: list[torch.Tensor], boxes: list[list[int]], img_size: int) -> torch.Tensor:
    decoder = DeviceDecoder(CPU, img_size, mean=(0.0,) * 3, std=(1.0,) * 3, train=False)
    batch = {
        "encoded": [_png(image) for image in images],
        "box": torch.tensor(boxes),
        "label": torch.arange(len(images)),
        "valid": torch.ones(len(images), dtype=torch.bool),
    }
    return decoder(batch)["image"]


@pytest.mark.parametrize("img_size", [4, 8, 13])
def test_crops_at_the_right_and_bottom_edge_of_a_smaller_image_stay_inside_it(img_size):
    """A white image in a batch with a larger one: every output pixel is white. Pasted into a
    canvas of the batch's largest size, the right/bottom samples blended in the zero padding."""
    white = torch.full((3, 5, 6), 255, dtype=torch.uint8)
    large = torch.randint(0, 256, (3, 20, 30), dtype=torch.uint8)
    boxes = [[0, 0, 5, 6, 0], [1, 2, 4, 3, 1], [0, 0, 20, 30, 0]]
    out = _decode([white, white, large], boxes, img_size)
    ones = torch.ones(3, img_size, img_size)
    assert torch.allclose(out[0], ones, atol=1e-5), out[0, 0]  # the canvas gave 0.667-0.95
    assert torch.allclose(out[1], ones, atol=1e-5), out[1, 0]


def test_a_box_inside_an_image_reads_its_real_neighbours():
    """An interior box: the one-pixel margin gives the same result as the whole image."""
    image = torch.randint(0, 256, (3, 12, 16), dtype=torch.uint8)
    inner = _decode([image], [[3, 4, 6, 8, 0]], 5)
    decoder = DeviceDecoder(CPU, 5, mean=(0.0,) * 3, std=(1.0,) * 3, train=False)
    from torchvision.ops import roi_align

    rois = torch.tensor([[0.0, 4, 3, 12, 9]])
    whole = roi_align(image[None].float(), rois, (5, 5), 1.0, -1, aligned=True)[0] / 255
    assert torch.allclose(inner[0], whole, atol=1e-6)
    assert decoder.failed == 0


class _LargestTensor(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel() * t.element_size())
        return out


def test_decode_memory_is_bounded_per_image_not_by_the_batch_largest():
    """One 300x400 image among eight: no tensor the size of 8 x the large image as float32
    (the old canvas: 11.5 MB), only one image's box as float32."""
    large = torch.randint(0, 256, (3, 300, 400), dtype=torch.uint8)
    small = [torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8) for _ in range(7)]
    boxes = [[0, 0, 300, 400, 0]] + [[0, 0, 16, 16, 1]] * 7
    probe = _LargestTensor()
    with probe:
        out = _decode([large, *small], boxes, 16)
    assert out.shape == (8, 3, 16, 16)
    one_image = 3 * 300 * 400 * 4
    assert probe.largest <= one_image
    assert probe.largest < 8 * one_image / 4
