"""Checks on a split's shard files before any plan is sized or any worker starts.

A shard set is data: a shard may be a symlink planted to make training read a file outside the
set. On a local disk every shard that exists must be a regular file whose resolved path stays
inside the shard root; object stores have no links. (Missing shards are not an error here: the
loader skips and counts their samples.)
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence

from pipelines.errors import DataError
from pipelines.storage import Location


def check_shard_files(root: Location, shards: Sequence[Location]) -> None:
    """Raise `DataError` naming the first shard that is a link out of `root` or not a file."""
    if not root.is_local:
        return
    base = os.path.realpath(root.path).rstrip(os.sep) + os.sep
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
            mode = os.stat(target).st_mode if os.path.exists(target) else stat.S_IFREG
        if not stat.S_ISREG(mode):
            raise DataError(f"{shard.uri} is not a regular file; a shard must be a tar file")
