"""Few-shot linear evaluation (ridge regression to {-1, 1}^K targets) and feature extraction."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from launch.processes.launchers import end_process_group
from pipelines.distributed import DistContext
from pipelines.evaluation import extract_features, fewshot_accuracy, fewshot_eval, gather_features
from pipelines.evaluation.fewshot import BIAS_CONSTANT, STD_EPS, RidgeProbe, select_shots
from vit_core import VisionTransformer, ViTConfig


def blobs(
    num_classes: int = 10, per_class: int = 30, dim: int = 32, spread: float = 1.0, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian blobs: one centre per class (seeded once), `per_class` noisy points each."""
    centres = torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(1234)) * 3
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    features = centres[labels] + spread * torch.randn(len(labels), dim, generator=g)
    perm = torch.randperm(len(labels), generator=g)
    return features[perm], labels[perm]


def test_separable_blobs_are_solved() -> None:
    train_x, train_y = blobs(per_class=30, seed=0)
    test_x, test_y = blobs(per_class=40, seed=1)
    for shots in (1, 5, 10):
        acc = fewshot_accuracy(train_x, train_y, test_x, test_y, shots=shots, num_classes=10)
        assert acc >= 0.95, (shots, acc)
    metrics = fewshot_eval(train_x, train_y, test_x, test_y, num_classes=10)
    assert set(metrics) == {"fewshot/5shot_top1", "fewshot/10shot_top1"}
    assert min(metrics.values()) >= 0.95
    normalised = fewshot_eval(train_x, train_y, test_x, test_y, num_classes=10, l2_normalize=True)
    assert min(normalised.values()) >= 0.95


def test_random_labels_score_near_chance() -> None:
    g = torch.Generator().manual_seed(0)
    train_x, test_x = torch.randn(500, 32, generator=g), torch.randn(3000, 32, generator=g)
    train_y = torch.randint(0, 10, (500,), generator=g)
    test_y = torch.randint(0, 10, (3000,), generator=g)
    metrics = fewshot_eval(train_x, train_y, test_x, test_y, shots=(5, 10, 25), num_classes=10)
    for value in metrics.values():
        assert 0.05 < value < 0.16, metrics


def test_deterministic_for_a_seed() -> None:
    train_x, train_y = blobs(per_class=30, spread=4.0, seed=0)  # overlapping: subsets matter
    test_x, test_y = blobs(per_class=40, spread=4.0, seed=1)
    kwargs = {"shots": 5, "num_classes": 10}
    first = fewshot_accuracy(train_x, train_y, test_x, test_y, seed=3, **kwargs)
    assert fewshot_accuracy(train_x, train_y, test_x, test_y, seed=3, **kwargs) == first
    a = select_shots(train_y, shots=5, num_classes=10, seed=3)
    b = select_shots(train_y, shots=5, num_classes=10, seed=3)
    assert torch.equal(a, b)
    assert not torch.equal(a, select_shots(train_y, shots=5, num_classes=10, seed=4))
    # per seed, the shot sets are nested (big_vision takes a prefix of one permutation per class)
    ten = select_shots(train_y, shots=10, num_classes=10, seed=3)
    assert set(a.tolist()) < set(ten.tolist())
    # k examples of each class, classes in order
    assert torch.equal(train_y[a], torch.arange(10).repeat_interleave(5))
    others = {
        fewshot_accuracy(train_x, train_y, test_x, test_y, seed=s, **kwargs) for s in range(6)
    }
    assert len(others) > 1  # the seed does change the subset


def test_fewer_examples_than_shots() -> None:
    train_x, train_y = blobs(num_classes=5, per_class=20, seed=0)
    keep = (train_y != 1) | (torch.cumsum(train_y == 1, 0) <= 3)  # class 1: 3 examples
    keep &= train_y != 4  # class 4: none at all
    train_x, train_y = train_x[keep], train_y[keep]
    idx = select_shots(train_y, shots=10, num_classes=5, seed=0)
    counts = torch.bincount(train_y[idx], minlength=5).tolist()
    assert counts == [10, 3, 10, 10, 0]
    test_x, test_y = blobs(num_classes=5, per_class=20, seed=1)
    seen = test_y != 4
    # a light regulariser: at width 32 the default 2**10 shrinks the weights until the bias
    # (mean target, lowest for the 3-example class) decides, and class 1 is never predicted
    acc = fewshot_accuracy(
        train_x, train_y, test_x[seen], test_y[seen], shots=10, num_classes=5, l2_reg=1.0
    )
    assert acc >= 0.95
    # far more shots than any class has: all of it is used; class 4 (a fifth of the test set)
    # has no training example, so its test rows are all wrong
    acc = fewshot_accuracy(train_x, train_y, test_x, test_y, shots=1000, num_classes=5, l2_reg=1.0)
    assert 0.75 <= acc <= 0.8


@pytest.mark.parametrize("n_per_class", [2, 20])  # N < D + 1 and N > D + 1
def test_dual_and_primal_forms_agree(n_per_class: int) -> None:
    x, y = blobs(num_classes=4, per_class=n_per_class, dim=32, spread=3.0, seed=0)
    test_x, _ = blobs(num_classes=4, per_class=50, dim=32, spread=3.0, seed=1)
    primal = RidgeProbe.fit(x, y, num_classes=4, form="primal")
    dual = RidgeProbe.fit(x, y, num_classes=4, form="dual")
    auto = RidgeProbe.fit(x, y, num_classes=4)
    assert auto.form == ("dual" if len(y) < 33 else "primal")
    for l2 in (1e-2, 1.0, 2.0**10):
        torch.testing.assert_close(primal.weights(l2), dual.weights(l2), rtol=1e-7, atol=1e-9)
        assert torch.equal(primal.predict(test_x, l2), dual.predict(test_x, l2))


def test_weights_match_a_direct_ridge_solve() -> None:
    x, y = blobs(num_classes=3, per_class=15, dim=8, seed=0)
    probe = RidgeProbe.fit(x, y, num_classes=3)
    xd = x.double()
    z = (xd - xd.mean(0)) / (xd.std(0, correction=0) + STD_EPS)
    z = torch.cat([z, torch.full((len(z), 1), BIAS_CONSTANT, dtype=torch.float64)], dim=1)
    targets = 2 * torch.nn.functional.one_hot(y, 3).double() - 1
    l2 = 5.0
    expected = torch.linalg.solve(
        z.T @ z + l2 * torch.eye(z.shape[1], dtype=torch.float64), z.T @ targets
    )
    torch.testing.assert_close(probe.weights(l2), expected, rtol=1e-8, atol=1e-10)


def test_l2_grid_is_selected_on_held_out_train_examples() -> None:
    train_x, train_y = blobs(per_class=30, spread=2.0, seed=0)
    test_x, test_y = blobs(per_class=40, spread=2.0, seed=1)
    grid = (1.0, 2.0**10, 2.0**20)
    metrics = fewshot_eval(
        train_x, train_y, test_x, test_y, shots=(5,), num_classes=10, l2_regs=grid
    )
    assert metrics["fewshot/5shot_l2_reg"] in grid
    chosen = fewshot_accuracy(
        train_x,
        train_y,
        test_x,
        test_y,
        shots=5,
        num_classes=10,
        l2_reg=metrics["fewshot/5shot_l2_reg"],
    )
    assert metrics["fewshot/5shot_top1"] == chosen
    # the test set plays no part in the choice: scrambling its labels keeps the choice
    scrambled = fewshot_eval(
        train_x, train_y, test_x, test_y.roll(1), shots=(5,), num_classes=10, l2_regs=grid
    )
    assert scrambled["fewshot/5shot_l2_reg"] == metrics["fewshot/5shot_l2_reg"]


def test_bad_inputs_are_clear_errors() -> None:
    x, y = blobs(num_classes=3, per_class=5)
    with pytest.raises(ValueError, match="labels must be in 0..1"):
        fewshot_accuracy(x, y, x, y, shots=2, num_classes=2)
    with pytest.raises(ValueError, match="shots=0"):
        fewshot_accuracy(x, y, x, y, shots=0, num_classes=3)
    with pytest.raises(ValueError, match="width"):
        fewshot_accuracy(x, y, x[:, :4], y, shots=2, num_classes=3)
    with pytest.raises(ValueError, match="l2_reg"):
        fewshot_accuracy(x, y, x, y, shots=2, num_classes=3, l2_reg=0.0)
    with pytest.raises(ValueError, match="no test examples"):
        fewshot_eval(x, y, x[:0], y[:0], num_classes=3)


# -- feature extraction ------------------------------------------------------------------------


def tiny_vit() -> VisionTransformer:
    torch.manual_seed(0)
    config = ViTConfig(img_size=32, patch_size=8, dim=32, depth=1, num_heads=2, num_classes=5)
    return VisionTransformer(config)


def loader_batches(valid_masks: list[list[bool]]) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    batches = []
    for mask in valid_masks:
        n = len(mask)
        batches.append(
            {
                "image": torch.randn(n, 3, 32, 32, generator=g),
                "label": torch.randint(0, 5, (n,), generator=g),
                "key": [f"k{i}" for i in range(n)],
                "valid": torch.tensor(mask),
            }
        )
    return batches


def test_extract_features_keeps_valid_rows() -> None:
    model = tiny_vit().train()
    batches = loader_batches([[True] * 4, [True, False, True, False], [False] * 4])
    features, labels = extract_features(model, batches)
    assert features.shape == (6, 32) and features.dtype == torch.float32
    assert labels.dtype == torch.int64
    assert model.training  # put back in the mode it came in
    valid = torch.cat([b["valid"] for b in batches])
    images = torch.cat([b["image"] for b in batches])[valid]
    with torch.no_grad():
        expected = model.eval().forward_head(model.forward_features(images), pre_logits=True)
    torch.testing.assert_close(features, expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(labels, torch.cat([b["label"] for b in batches])[valid])

    first, _ = extract_features(model, batches, max_batches=1)
    assert first.shape == (4, 32)
    empty, empty_labels = extract_features(model, [])
    assert empty.shape == (0, 0) and empty_labels.shape == (0,)


def test_extract_features_with_a_callable() -> None:
    batches = loader_batches([[True, True, False]])
    features, labels = extract_features(lambda x: x.flatten(1)[:, :7], batches)
    assert features.shape == (2, 7) and labels.shape == (2,)


def test_gather_without_a_process_group_is_the_identity() -> None:
    x, y = torch.randn(3, 4), torch.arange(3)
    gx, gy = gather_features(x, y, DistContext())
    assert gx is x and gy is y


def _gather_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        ctx = DistContext(rank=rank, world_size=world)
        rows = [3, 2][rank]
        x = torch.full((rows, 4), float(rank)) + torch.arange(rows).view(-1, 1)
        y = torch.full((rows,), rank, dtype=torch.int64)
        uneven = gather_features(x, y, ctx)
        # a rank with no valid row at all (its features come out (0, 0) from extract_features)
        empty_x = x if rank == 0 else torch.zeros(0, 0)
        empty_y = y if rank == 0 else torch.zeros(0, dtype=torch.int64)
        one_sided = gather_features(empty_x, empty_y, ctx)
        torch.save({"uneven": uneven, "one_sided": one_sided}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        end_process_group()  # a bare destroy can let gloo abort this process as it exits


@pytest.mark.slow
def test_gather_features_across_two_gloo_ranks(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(target=_gather_worker, args=(r, 2, str(tmp_path / "pg"), str(tmp_path)))
        for r in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    expected_x = torch.cat(
        [
            torch.zeros(3, 4) + torch.arange(3).view(-1, 1),
            torch.ones(2, 4) + torch.arange(2).view(-1, 1),
        ]
    )
    expected_y = torch.tensor([0, 0, 0, 1, 1])
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert torch.equal(got["uneven"][0], expected_x)
        assert torch.equal(got["uneven"][1], expected_y)
        assert torch.equal(got["one_sided"][0], expected_x[:3])
        assert torch.equal(got["one_sided"][1], expected_y[:3])
