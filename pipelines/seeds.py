"""Every seed vitpipe derives, in one place.

Every data stream gets its own seed from the run seed plus a purpose and coordinates
(`derive_seed("shards", seed, epoch)`, `derive_seed("sample", seed, epoch, position)`), so
streams never share or shift each other's draws and a value is the same in every process, on
every machine and under every Python version (no `hash()`, no global RNG). The trainer's three
seeds keep the arithmetic they had in vitpipe 0.1, so that a checkpoint written then resumes to
exactly the losses it would have had.
"""

from __future__ import annotations

import hashlib


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from any tuple of ints/strings, stable across processes and Python versions.

    Use a string naming the stream first: `derive_seed("mixup", seed, rank)`.
    """
    text = "/".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def rank_seed(seed: int, rank: int) -> int:
    """The global torch RNG of `rank` at a fresh start (dropout, drop path)."""
    return seed * 1000 + rank


def resharded_rank_seed(seed: int, rank: int, step: int) -> int:
    """The global torch RNG of `rank` after resuming on another world size (RNG states of the
    old ranks do not map to the new ones)."""
    return seed * 1000 + rank + 7919 * step


def mix_seed(seed: int, step: int, micro_step: int, rank: int) -> int:
    """Mixup/CutMix of one micro-batch: a pure function of where it is in training. Reduced mod
    2^64 (what `manual_seed` takes): the 0.1 seed wherever it fitted."""
    return (((seed * 1_000_003 + step) * 131 + micro_step) * 4099 + rank) % 2**64
