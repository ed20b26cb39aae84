"""data.decode_device: workers send encoded images + crop boxes, the training process decodes,
crops, flips and normalises the batch on its device. Run here on the CPU device: same batches,
same labels, images that match the CPU-worker path, deterministic crops, bad streams handled."""

from __future__ import annotations

import pytest
import torch

from pipelines.config import config_from_dict
from pipelines.data.loader.crop_boxes import eval_box, train_box
from pipelines.errors import ConfigError

from shard_fixtures import make_loader, write_shard_set

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def jpeg_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("jpeg")
    write_shard_set(
        root, {"train": [12, 12], "val": [10]}, image_format="jpeg", image_size=48, smooth=True
    )
    return root


def _epoch(loader):
    return [batch for batch in loader]


def test_eval_batches_match_the_cpu_worker_path(jpeg_root):
    cpu = _epoch(make_loader(jpeg_root, split="val", train=False, micro_batch_size=4))
    device = _epoch(
        make_loader(jpeg_root, split="val", train=False, micro_batch_size=4, decode_on=CPU)
    )
    assert len(cpu) == len(device) >= 3  # 10 samples, padded per worker
    for a, b in zip(cpu, device, strict=True):
        assert a["key"] == b["key"] and torch.equal(a["label"], b["label"])
        assert torch.equal(a["valid"], b["valid"])
        assert b["image"].shape == a["image"].shape == (4, 3, 16, 16)
        assert b["image"].dtype == torch.float32 and b["image"].device == CPU
        # One crop-and-resize vs resize, round to uint8, crop: the same picture within a few
        # grey levels (the CPU path's integer resize moves the crop by a fraction of a pixel).
        assert (a["image"] - b["image"]).abs().mean() < 0.08
        assert "encoded" not in b and "box" not in b


def test_train_crops_are_deterministic_and_resume_exactly(jpeg_root):
    kwargs = dict(micro_batch_size=4, decode_on=CPU, scale=[0.3, 1.0], hflip=0.5)
    first = _epoch(make_loader(jpeg_root, **kwargs))
    again = _epoch(make_loader(jpeg_root, **kwargs))
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(first, again, strict=True))

    resumed = make_loader(jpeg_root, **kwargs)
    head = iter(resumed)
    next(head)
    state = resumed.state_dict()
    rest = make_loader(jpeg_root, **kwargs)
    rest.load_state_dict(state)
    tail = _epoch(rest)
    assert [b["key"] for b in tail] == [b["key"] for b in first[1:]]
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(first[1:], tail, strict=True))


def test_a_full_image_box_is_the_identity_and_flip_mirrors_it():
    import io

    from PIL import Image

    from pipelines.data.loader.device_decode import DeviceDecoder

    pixels = torch.arange(3 * 8 * 12, dtype=torch.uint8).reshape(3, 8, 12) * 2
    buf = io.BytesIO()
    Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(buf, format="PNG")
    encoded = torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)
    decoder = DeviceDecoder(CPU, 8, mean=(0.0,) * 3, std=(1.0,) * 3, train=False)
    batch = decoder(
        {
            "encoded": [encoded, encoded],
            "box": torch.tensor([[0, 2, 8, 8, 0], [0, 2, 8, 8, 1]]),
            "label": torch.tensor([0, 1]),
            "valid": torch.tensor([True, True]),
        }
    )
    expected = pixels[:, :, 2:10].float() / 255
    assert torch.allclose(batch["image"][0], expected, atol=1e-6)
    assert torch.allclose(batch["image"][1], expected.flip(-1), atol=1e-6)


def test_boxes_stay_inside_the_image_and_follow_the_scale_range():
    from pipelines.config.data import AugmentSection

    augment = AugmentSection(scale=[0.25, 0.5], hflip=0.5)
    boxes = [train_box(64, 40, augment, seed) for seed in range(200)]
    for box in boxes:
        assert box.top >= 0 and box.top + box.height <= 40
        assert box.left >= 0 and box.left + box.width <= 64
    areas = [b.height * b.width / (64 * 40) for b in boxes]
    assert min(areas) > 0.2 and max(areas) < 0.55
    assert 0.3 < sum(b.flip for b in boxes) / len(boxes) < 0.7
    assert train_box(64, 40, augment, 7) == train_box(64, 40, augment, 7)
    assert eval_box(64, 40, 0.875) == (2, 14, 35, 35, False)


def test_a_stream_that_fails_to_decode_is_refilled_in_training_and_masked_in_eval(tmp_path):
    bad = {"train000_0001", "val000_0002"}
    write_shard_set(tmp_path, {"train": [8], "val": [4]}, image_format="jpeg", bad_after_header=bad)
    train = make_loader(
        tmp_path, micro_batch_size=4, num_workers=1, shuffle_buffer=0, decode_on=CPU
    )
    batches = _epoch(train)
    assert all(b["valid"].all() for b in batches)
    assert sum(k == "train000_0001" for b in batches for k in b["key"]) == 0
    assert train.stats()["samples_skipped"] == 1

    val = make_loader(
        tmp_path, split="val", train=False, micro_batch_size=4, num_workers=1, decode_on=CPU
    )
    (batch,) = _epoch(val)
    assert batch["valid"].tolist() == [True, True, False, True]


def test_device_decode_with_randaugment_is_a_config_error():
    with pytest.raises(ConfigError, match="augment.randaugment"):
        config_from_dict(
            {
                "data": {"decode_device": "cuda"},
                "augment": {"randaugment": True},
                "cluster": {"use_gpu": True},
            }
        )
