"""Cleaning up after DeepSpeed's CPU all-reduce in the distributed benchmarks.

With LOCAL_SIZE set (as zero_vs_ddp.py and host_syncs.py set it, and vitpipe's launchers do
not), DeepSpeed's shm_comm op creates a 66 MiB segment per rank,
`/dev/shm/deepspeed_allreduce_buffer_<uid>_<MASTER_ADDR>_<MASTER_PORT>_<rank>`, and never removes
it: each run would leave its segments in memory until a reboot.
"""

from __future__ import annotations

import os
from pathlib import Path


def release_deepspeed_shm(rank: int) -> None:
    """Remove the name of this rank's segment. Called once the benchmark is over (every peer
    mapped it at start-up); the memory goes when the last process holding it exits. The name is
    exact, so no other run's segment is touched."""
    addr, port = os.environ.get("MASTER_ADDR", ""), os.environ.get("MASTER_PORT", "")
    name = f"deepspeed_allreduce_buffer_{os.getuid()}_{addr}_{port}_{rank}"
    Path("/dev/shm", name).unlink(missing_ok=True)
