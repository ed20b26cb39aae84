"""Few-shot linear evaluation of a frozen representation, as in the ViT paper.

Dosovitskiy et al. 2021, section 4.1: few-shot accuracy is "obtained by solving a regularized
least-squares regression problem that maps the (frozen) representation of a subset of training
images to {-1, 1}^K target vectors". The behaviour follows big_vision's `evaluators/fewshot.py`:

- k shots per class: each class's train indices are permuted with `numpy.random.default_rng(seed)`
  (classes in order 0..K-1) and the first k are kept, so for one seed the 5-shot set is part of the
  10-shot set. A class with fewer than k examples contributes all it has (none: no row).
- Features are standardised per dimension with the mean and std (+1e-5) of the k-shot subset; the
  test features get the same affine map. Optionally (`l2_normalize=True`, not in big_vision) each
  row is first scaled to unit L2 norm.
- A constant feature of 100 is appended as the bias: a column that large is almost unregularised.
- Ridge regression to targets 2 * one_hot - 1, in float64, through the eigendecomposition of
  X^T X (primal, N >= D) or of the kernel X X^T (dual, N < D), which also makes a grid of
  regularisers cost one decomposition.
- The regulariser is big_vision's fixed 2**10 by default (its ViT configs' `l2_reg`); see
  `fewshot_eval` for the optional selection from a grid.

Shapes: N train rows, M test rows, D feature width, K classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

DEFAULT_L2_REG = 2.0**10
BIAS_CONSTANT = 100.0
STD_EPS = 1e-5
FORMS = ("auto", "primal", "dual")
_TEST_CHUNK = 8192  # test rows per float64 block: bounds memory for large test sets


def select_shots(labels: torch.Tensor, *, shots: int, num_classes: int, seed: int) -> torch.Tensor:
    """Indices (int64) of up to `shots` examples per class, class 0 first; see module docstring."""
    if shots < 1:
        raise ValueError(f"shots={shots!r}: must be >= 1")
    per_class = _class_permutations(_labels_array(labels, num_classes), num_classes, seed)
    return torch.from_numpy(np.concatenate([idx[:shots] for idx in per_class]).astype(np.int64))


@dataclass(frozen=True)
class RidgeProbe:
    """A least-squares probe fitted on whitened features, for any number of regularisers.

    Prediction for regulariser l2 is `x_test @ lhs @ diag(1 / (eigs + l2)) @ rhs`:
    primal: eigh(X^T X) = Q diag(e) Q^T, lhs = Q, rhs = Q^T X^T Y  (W = (X^T X + l2 I)^-1 X^T Y);
    dual:   eigh(X X^T) = Q diag(e) Q^T, lhs = X^T Q, rhs = Q^T Y  (W = X^T (X X^T + l2 I)^-1 Y).
    """

    mean: torch.Tensor  # (1, D) float64
    std: torch.Tensor  # (1, D) float64
    eigs: torch.Tensor  # (min(N, D + 1),)
    lhs: torch.Tensor  # (D + 1, min(N, D + 1))
    rhs: torch.Tensor  # (min(N, D + 1), K)
    l2_normalize: bool
    form: str

    @classmethod
    def fit(
        cls,
        features: torch.Tensor,
        labels: torch.Tensor,
        *,
        num_classes: int,
        l2_normalize: bool = False,
        form: str = "auto",
    ) -> RidgeProbe:
        if form not in FORMS:
            raise ValueError(f"form={form!r}: allowed values are {list(FORMS)}")
        x = _features_array(features, "train_features").to(torch.float64)
        y = torch.from_numpy(_labels_array(labels, num_classes))
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"{x.shape[0]} train feature rows but {y.shape[0]} labels")
        if x.shape[0] == 0:
            raise ValueError("no training examples to fit the few-shot probe on")
        if l2_normalize:
            x = _unit_rows(x)
        mean = x.mean(dim=0, keepdim=True)
        std = x.std(dim=0, keepdim=True, correction=0) + STD_EPS
        x = _with_bias((x - mean) / std)
        targets = 2.0 * torch.nn.functional.one_hot(y, num_classes).to(torch.float64) - 1.0
        n, d = x.shape
        if form == "auto":
            form = "primal" if n >= d else "dual"
        if form == "primal":
            eigs, q = torch.linalg.eigh(x.T @ x)
            lhs, rhs = q, q.T @ (x.T @ targets)
        else:
            eigs, q = torch.linalg.eigh(x @ x.T)
            lhs, rhs = x.T @ q, q.T @ targets
        return cls(mean, std, eigs, lhs, rhs, l2_normalize, form)

    def weights(self, l2_reg: float) -> torch.Tensor:
        """(D + 1, K) float64 weights for regulariser `l2_reg` (the last row is the bias's)."""
        if not l2_reg > 0:
            raise ValueError(f"l2_reg={l2_reg!r}: must be > 0")
        return (self.lhs / (self.eigs + l2_reg)) @ self.rhs

    def predict(self, features: torch.Tensor, l2_reg: float) -> torch.Tensor:
        """Class ids (int64, M) for test features (M, D)."""
        x = _features_array(features, "test_features")
        if x.shape[0] and x.shape[1] != self.mean.shape[1]:
            raise ValueError(
                f"test features have width {x.shape[1]}, train features {self.mean.shape[1]}"
            )
        w = self.weights(l2_reg)
        out = []
        for start in range(0, x.shape[0], _TEST_CHUNK):
            chunk = x[start : start + _TEST_CHUNK].to(torch.float64)
            if self.l2_normalize:
                chunk = _unit_rows(chunk)
            out.append((_with_bias((chunk - self.mean) / self.std) @ w).argmax(dim=1))
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.int64)


def fewshot_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    shots: int,
    num_classes: int,
    l2_reg: float = DEFAULT_L2_REG,
    seed: int = 0,
    l2_normalize: bool = False,
) -> float:
    """Top-1 accuracy on the test set of a ridge probe fitted on `shots` examples per class.

    `train_features` (N, D) / `train_labels` (N,) are the pool the shots are drawn from;
    `test_features` (M, D) / `test_labels` (M,) are all scored. Deterministic for a given seed.
    """
    if shots < 1:
        raise ValueError(f"shots={shots!r}: must be >= 1")
    if not l2_reg > 0:
        raise ValueError(f"l2_reg={l2_reg!r}: must be > 0")
    metrics = fewshot_eval(
        train_features,
        train_labels,
        test_features,
        test_labels,
        shots=(shots,),
        num_classes=num_classes,
        seed=seed,
        l2_regs=(l2_reg,),
        l2_normalize=l2_normalize,
    )
    return metrics[f"fewshot/{shots}shot_top1"]


def fewshot_eval(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    shots: Sequence[int] = (5, 10),
    num_classes: int,
    seed: int = 0,
    l2_regs: Sequence[float] = (DEFAULT_L2_REG,),
    l2_normalize: bool = False,
) -> dict[str, float]:
    """`{"fewshot/5shot_top1": ..., "fewshot/10shot_top1": ...}` for every k in `shots`.

    With one value in `l2_regs` (default: big_vision's fixed 2**10) that value is used. With
    several, each k picks its own on held-out train examples: the next k examples of each class's
    permutation (disjoint from the k-shot set, so it needs up to 2k per class; a class with
    fewer has fewer or none held out). The value with the best held-out accuracy wins (ties: the
    first in `l2_regs`; no held-out example at all: `l2_regs[0]`), and is reported as
    `fewshot/{k}shot_l2_reg`. The test set is never used for the choice.
    """
    if not l2_regs:
        raise ValueError("l2_regs is empty: give at least one regulariser")
    for value in l2_regs:
        if not value > 0:
            raise ValueError(f"l2_regs contains {value!r}: every regulariser must be > 0")
    train_x = _features_array(train_features, "train_features")
    train_np = _labels_array(train_labels, num_classes)
    train_y = torch.from_numpy(train_np)
    if train_x.shape[0] != train_y.shape[0]:
        raise ValueError(f"{train_x.shape[0]} train feature rows but {train_y.shape[0]} labels")
    test_y = torch.from_numpy(_labels_array(test_labels, num_classes))
    if test_y.numel() == 0:
        raise ValueError("no test examples to measure few-shot accuracy on")
    per_class = _class_permutations(train_np, num_classes, seed)
    results: dict[str, float] = {}
    for k in shots:
        if k < 1:
            raise ValueError(f"shots contains {k!r}: every shot count must be >= 1")
        fit_idx = torch.from_numpy(np.concatenate([p[:k] for p in per_class]).astype(np.int64))
        probe = RidgeProbe.fit(
            train_x[fit_idx], train_y[fit_idx], num_classes=num_classes, l2_normalize=l2_normalize
        )
        l2_reg = l2_regs[0]
        if len(l2_regs) > 1:
            held = torch.from_numpy(
                np.concatenate([p[k : 2 * k] for p in per_class]).astype(np.int64)
            )
            if held.numel():
                scores = [
                    float((probe.predict(train_x[held], reg) == train_y[held]).double().mean())
                    for reg in l2_regs
                ]
                l2_reg = l2_regs[int(np.argmax(scores))]
            results[f"fewshot/{k}shot_l2_reg"] = float(l2_reg)
        predicted = probe.predict(test_features, l2_reg)
        if predicted.shape[0] != test_y.shape[0]:
            raise ValueError(f"{predicted.shape[0]} test feature rows but {test_y.shape[0]} labels")
        results[f"fewshot/{k}shot_top1"] = float((predicted == test_y).double().mean())
    return results


def _class_permutations(labels: np.ndarray, num_classes: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.permutation(np.flatnonzero(labels == c)) for c in range(num_classes)]


def _labels_array(labels: torch.Tensor | np.ndarray, num_classes: int) -> np.ndarray:
    if num_classes < 1:
        raise ValueError(f"num_classes={num_classes!r}: must be >= 1")
    y = torch.as_tensor(labels).reshape(-1)
    if y.is_floating_point() or y.dtype == torch.bool:
        raise ValueError(f"labels must be integer class ids, got dtype {y.dtype}")
    y = y.long().cpu().numpy()
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(
            f"labels must be in 0..{num_classes - 1} (num_classes={num_classes}); "
            f"found {int(y.min())}..{int(y.max())}"
        )
    return y


def _features_array(features: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
    x = torch.as_tensor(features).detach().cpu()
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2D (rows, width) array, got shape {tuple(x.shape)}")
    return x


def _unit_rows(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _with_bias(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.pad(x, (0, 1), value=BIAS_CONSTANT)
