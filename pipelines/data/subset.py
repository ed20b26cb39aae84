"""k-shot training sets: k labelled images per class, chosen by a seed, out of a shard plan's
train split (`shard.train_per_class`, `shard.train_subset_seed`). The val split is left as it is:
the split is made first, from `shard.seed` alone, so every k and every subset seed is evaluated
on the same images, written to the same bytes.

The choice hashes (seed, key) like the rest of the write plan (no numpy or Python version in it),
and takes each class's first k in that order, so for one seed the subsets grow by adding images:
the 5-shot set is part of the 20-shot set.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence

from pipelines.data.sources.base import SampleRef
from pipelines.errors import DataError


def _rank(seed: int, key: str) -> bytes:
    return hashlib.sha256(f"{seed}\0train_subset\0{key}".encode()).digest()


def select_per_class(refs: Sequence[SampleRef], per_class: int, seed: int) -> list[SampleRef]:
    """`per_class` refs of every label (in the order given); DataError if a class has fewer."""
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    by_class: dict[int, list[SampleRef]] = defaultdict(list)
    for ref in refs:
        by_class[ref.label].append(ref)
    short = {label: len(members) for label, members in by_class.items() if len(members) < per_class}
    if short:
        counts = ", ".join(f"class {label}: {n}" for label, n in sorted(short.items()))
        raise DataError(
            f"shard.train_per_class={per_class}: some classes have fewer training images "
            f"({counts}); use a smaller k or a smaller shard.val_fraction"
        )
    chosen = {
        ref.key
        for members in by_class.values()
        for ref in sorted(members, key=lambda r: _rank(seed, r.key))[:per_class]
    }
    return [ref for ref in refs if ref.key in chosen]
