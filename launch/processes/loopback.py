"""Local mode listens on loopback only, whatever the environment.

Ray's dashboard, Jobs API, GCS and raylet, and torch.distributed's TCPStore, are unauthenticated
(ShadowRay, CVE-2023-48022) or weakly authenticated, so a laptop run must not expose them:

- Ray decides its node address when `ray._private.ray_constants` is imported, from
  `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`: `0` means 127.0.0.1 for the driver and every process it
  starts. `prepare_ray()` sets it before Ray is imported (and corrects an already-imported Ray),
  and the caller passes the node IP explicitly.
- torch's TCPStore binds `::` (every interface) whatever MASTER_ADDR says, so local mode never
  starts one: ranks meet through a `FileStore` in a private temporary file
  (`launch/processes/loopback_train.py` for Ray Train, `file_init_method()` for one process), and gloo/NCCL
  are pinned to the loopback interface (`GLOO_SOCKET_IFNAME`, `NCCL_SOCKET_IFNAME`).
On a cluster none of this applies; NOTES/README list the ports to keep on a private network.
"""

from __future__ import annotations

import os
import socket
import tempfile

LOOPBACK = "127.0.0.1"
_RAY_CLUSTER_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def loopback_interface() -> str:
    """The name of the interface that carries 127.0.0.1 ("lo" on Linux, "lo0" on macOS)."""
    try:
        import psutil

        for name, addresses in psutil.net_if_addrs().items():
            if any(a.family == socket.AF_INET and a.address == LOOPBACK for a in addresses):
                return name
    except ImportError:
        pass
    return "lo0" if os.uname().sysname == "Darwin" else "lo"


def worker_env() -> dict[str, str]:
    """Environment every local-mode worker needs so its collectives stay on loopback."""
    interface = loopback_interface()
    return {
        _RAY_CLUSTER_ENV: "0",
        "GLOO_SOCKET_IFNAME": interface,
        "NCCL_SOCKET_IFNAME": interface,
    }


def prepare_ray() -> None:
    """Before `ray.init` of a local Ray: every address Ray picks becomes 127.0.0.1."""
    os.environ.update(worker_env())
    import ray._private.ray_constants as ray_constants

    # Imported before this call (with the variable unset), Ray has already decided; correct it.
    ray_constants.ENABLE_RAY_CLUSTER = False


def file_init_method(folder: str | None = None) -> str:
    """A fresh `file://` rendezvous in `folder` (default: the temp dir): no listening socket.
    The file is created empty and private (0600)."""
    if folder:
        os.makedirs(folder, exist_ok=True)
    fd, path = tempfile.mkstemp(prefix="rendezvous-", dir=folder)
    os.close(fd)
    return "file://" + path
