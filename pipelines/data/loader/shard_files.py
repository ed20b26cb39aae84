"""Checks on a split's shard files: links, kinds and sizes before any plan is sized or any
worker starts (`check_shard_files`), content against the manifest before a consumer uses a
shard's samples (`verify_shard`).

A shard set is data: a shard may be a symlink planted to make training read a file outside the
set. On a local disk every shard that exists must be a regular file whose resolved path stays
inside the shard root; object stores have no links. (Missing shards are not an error here: the
loader skips and counts their samples.)
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Sequence

import pyarrow.fs as pafs

from pipelines.data.manifest import TAR_BLOCK, ShardInfo
from pipelines.errors import DataError
from pipelines.storage import Location, RefusedFile

_HASH_CHUNK = 1 << 20


def check_shard_files(
    root: Location, shards: Sequence[Location], infos: Sequence[ShardInfo]
) -> None:
    """Raise `DataError` naming the first shard that is a link out of `root`, not a file, or
    smaller than the sample count the manifest claims could fit in (before any plan is sized
    from those counts)."""
    sizes = _local_sizes(root, shards) if root.is_local else _listed_sizes(root)
    for shard, info in zip(shards, infos, strict=True):
        size = sizes.get(shard.path)
        runs = info.samples + len(info.skip)
        if size is not None and runs * TAR_BLOCK > size:
            raise DataError(
                f"{shard.uri}: the manifest claims {runs} samples, but the file's {size} bytes "
                f"hold at most {size // TAR_BLOCK}; the manifest does not describe this file"
            )


def _local_sizes(root: Location, shards: Sequence[Location]) -> dict[str, int]:
    base = os.path.realpath(root.path).rstrip(os.sep) + os.sep
    sizes = {}
    for shard in shards:
        try:
            mode = os.lstat(shard.path).st_mode
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(mode):
            target = os.path.realpath(shard.path)
            if not target.startswith(base):
                raise DataError(
                    f"{shard.uri} is a symlink to {target}, outside the shard directory "
                    f"{root.uri}; shards are read only from inside it"
                )
            if not os.path.exists(target):
                continue
        st = os.stat(shard.path)
        if not stat.S_ISREG(st.st_mode):
            raise DataError(f"{shard.uri} is not a regular file; a shard must be a tar file")
        sizes[shard.path] = st.st_size
    return sizes


def _listed_sizes(root: Location) -> dict[str, int]:
    """Sizes from one listing of the shard root (one request per 1000 objects, not per shard)."""
    selector = pafs.FileSelector(root.path, allow_not_found=True)
    return {
        e.path: e.size or 0 for e in root.fs.get_file_info(selector) if e.type == pafs.FileType.File
    }


def verify_shard(shard: Location, root: Location, num_bytes: int, sha256: str) -> None:
    """Hash the whole file and compare it with the manifest; `DataError` naming the shard if it
    differs. A missing or refused file is left to the tar reader, which skips and counts it."""
    if not sha256:
        raise DataError(
            f"{shard.uri}: the manifest records no sha256 for this shard, so it cannot be "
            "verified; re-create the manifest with `vitpipe shard`, or set data.verify_shards=never"
        )
    try:
        handle = shard.open_regular(root)
    except (FileNotFoundError, RefusedFile):
        return
    digest, size = hashlib.sha256(), 0
    with handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    if size != num_bytes or digest.hexdigest() != sha256:
        raise DataError(
            f"{shard.uri}: content does not match the manifest (sha256 {digest.hexdigest()[:16]}.., "
            f"{size} bytes; manifest: {sha256[:16]}.., {num_bytes} bytes): the shard changed after "
            f"the manifest was written; run `vitpipe shard -c <its shard config> --rehash "
            f"{shard.name}` (it indexes your shards again, or rewrites ours), or set "
            "data.verify_shards=never to train on it as it is"
        )
