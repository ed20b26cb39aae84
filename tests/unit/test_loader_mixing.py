"""Mixup/CutMix: deterministic given a generator, soft targets that sum to one."""

from __future__ import annotations

import pytest
import torch

from pipelines.data.mixing import mix_batch, smooth_one_hot


def _batch():
    gen = torch.Generator().manual_seed(0)
    return torch.randn(6, 3, 16, 16, generator=gen), torch.tensor([0, 1, 2, 3, 4, 0])


@pytest.mark.parametrize("mixup,cutmix", [(0.8, 0.0), (0.0, 1.0), (0.8, 1.0), (0.0, 0.0)])
def test_mixing_is_deterministic_and_targets_sum_to_one(mixup, cutmix):
    images, labels = _batch()
    kw = dict(num_classes=5, mixup_alpha=mixup, cutmix_alpha=cutmix, label_smoothing=0.1)
    out1 = mix_batch(images, labels, generator=torch.Generator().manual_seed(7), **kw)
    out2 = mix_batch(images, labels, generator=torch.Generator().manual_seed(7), **kw)
    assert torch.equal(out1[0], out2[0]) and torch.equal(out1[1], out2[1])
    mixed, targets = out1
    assert mixed.shape == images.shape and targets.shape == (6, 5)
    assert torch.allclose(targets.sum(1), torch.ones(6))
    assert (targets >= 0).all()
    if mixup or cutmix:
        assert not torch.equal(mixed, images)
        seeds = [torch.Generator().manual_seed(s) for s in range(1, 6)]
        others = [mix_batch(images, labels, generator=g, **kw)[1] for g in seeds]
        assert any(not torch.equal(o, targets) for o in others)
    assert torch.equal(images, _batch()[0])  # inputs untouched


def test_cutmix_targets_follow_the_pasted_area():
    images = torch.zeros(2, 1, 10, 10)
    images[1] = 1.0
    labels = torch.tensor([0, 1])
    mixed, targets = mix_batch(
        images, labels, num_classes=2, cutmix_alpha=1.0, generator=torch.Generator().manual_seed(3)
    )
    pasted = mixed[0].mean().item()  # fraction of sample 0 now showing sample 1
    assert targets[0, 1].item() == pytest.approx(pasted)


def test_smooth_one_hot():
    t = smooth_one_hot(torch.tensor([2, 0]), 4, smoothing=0.2)
    assert torch.allclose(t[0], torch.tensor([0.05, 0.05, 0.85, 0.05]))
    assert torch.allclose(t.sum(1), torch.ones(2))
