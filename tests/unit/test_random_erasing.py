"""Random erasing (DeiT's augment.random_erasing): a box of noise, drawn from the per-sample seed,
so a resumed epoch stays bit-identical."""

from __future__ import annotations

import itertools

import pytest
import torch

from pipelines.config import config_from_dict
from pipelines.config.data import AugmentSection
from pipelines.data.loader.transforms import RandomErasing, apply_seeded, train_transform
from pipelines.errors import ConfigError

from shard_fixtures import make_loader, write_shard_set

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")


def _erased_box(before: torch.Tensor, after: torch.Tensor) -> tuple[int, int]:
    """Height and width of the changed region, checking that it is one filled rectangle."""
    rows = (before != after).any(dim=0).any(dim=1).nonzero().flatten()
    cols = (before != after).any(dim=0).any(dim=0).nonzero().flatten()
    h, w = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
    return h, w


def test_erasing_replaces_one_box_of_2_to_33_percent_with_noise():
    image = torch.full((3, 64, 64), 128, dtype=torch.uint8)
    sizes = []
    for seed in range(50):
        out = apply_seeded(RandomErasing(1.0), image, seed)
        assert out.dtype == torch.uint8 and out.shape == image.shape
        h, w = _erased_box(image, out)
        sizes.append(h * w / 64**2)
        assert 0.3 / 1.1 <= h / w <= 1.1 / 0.3
    assert min(sizes) >= 0.015 and max(sizes) <= 0.35
    assert torch.equal(image, torch.full((3, 64, 64), 128, dtype=torch.uint8))  # input untouched


def test_the_same_seed_erases_the_same_box_and_p_0_erases_nothing():
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    a = apply_seeded(RandomErasing(0.5), image, 7)
    b = apply_seeded(RandomErasing(0.5), image, 7)
    assert torch.equal(a, b)
    erased = sum(
        not torch.equal(apply_seeded(RandomErasing(0.5), image, s), image) for s in range(40)
    )
    assert 10 <= erased <= 30  # about half
    plain = train_transform(AugmentSection(), 16)
    off = train_transform(AugmentSection(random_erasing=0.0), 16)
    assert torch.equal(apply_seeded(plain, image, 3), apply_seeded(off, image, 3))


def test_a_resumed_epoch_with_erasing_is_bit_identical(tmp_path):
    write_shard_set(tmp_path, {"train": [7, 13, 9]})
    kw = dict(world_size=1, num_workers=2, random_erasing=1.0)
    expected = list(make_loader(tmp_path, **kw))
    plain = list(make_loader(tmp_path, world_size=1, num_workers=2))
    assert not all(
        torch.equal(a["image"], b["image"]) for a, b in zip(expected, plain, strict=True)
    )
    first = make_loader(tmp_path, **kw)
    head = list(itertools.islice(iter(first), 2))
    resumed = make_loader(tmp_path, **kw)
    resumed.load_state_dict(first.state_dict())
    got = head + list(resumed)
    assert [b["key"] for b in got] == [b["key"] for b in expected]
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(got, expected, strict=True))


def test_erasing_is_a_probability_and_runs_in_the_cpu_workers():
    with pytest.raises(ConfigError) as err:
        config_from_dict({"augment": {"random_erasing": 1.5}})
    assert err.value.problems[0].startswith("augment.random_erasing")
    with pytest.raises(ConfigError) as err:
        config_from_dict(
            {
                "augment": {"random_erasing": 0.25},
                "data": {"decode_device": "cuda"},
                "cluster": {"use_gpu": True},
            }
        )
    assert any("augment.random_erasing runs in the CPU" in p for p in err.value.problems)
