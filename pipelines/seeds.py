"""The one way vitpipe turns a run seed into the seed of one random stream.

Every stream gets its own seed from the run seed plus a purpose and coordinates
(`derive_seed("shards", seed, epoch)`, `derive_seed("sample", seed, epoch, position)`), so
streams never share or shift each other's draws and a value is the same in every process,
on every machine and under every Python version (no `hash()`, no global RNG).
"""

from __future__ import annotations

import hashlib


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from any tuple of ints/strings, stable across processes and Python versions.

    Use a string naming the stream first: `derive_seed("mixup", seed, rank)`.
    """
    text = "/".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1
