"""Where a run keeps what: run storage (the run dir: a local path, a shared filesystem path or
a URI such as `s3://bucket/prefix`) holds everything another node or the driver reads; node-local
scratch (`cluster.local_scratch`) is only a staging area that may vanish between a stop and a
resume.

The checks here run before launch, on the driver, so that a cluster job that cannot work fails
in one line instead of on a worker later.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pipelines.config import ClusterSection, StageConfig
from pipelines.errors import ConfigError
from pipelines.storage import Location, is_uri, locate
from pipelines.transfer import download_file, upload_dir, upload_file

# Tracking URIs that are a file on the machine that opens them.
_LOCAL_TRACKING = ("sqlite:", "file:")


def node_scratch(cluster: ClusterSection, node_id: str) -> Path:
    """This node's staging dir (created): `cluster.local_scratch` with `{node_id}` replaced, or
    `<temp dir>/vitpipe-scratch/<node_id>` by default."""
    template = cluster.local_scratch or str(
        Path(tempfile.gettempdir()) / "vitpipe-scratch" / "{node_id}"
    )
    path = Path(template.format(node_id=node_id)).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass(frozen=True)
class RunDir:
    """A run dir as one process sees it: `storage` (what every node and the driver read) and
    `local`, where this process reads and writes the run's files: the run dir itself when the
    storage is a local or shared path, else this node's scratch copy, published to storage by
    `publish` and brought back by `fetch`."""

    storage: Location
    local: Path

    @classmethod
    def open(cls, run_dir: str, cluster: ClusterSection, node_id: str = "driver") -> RunDir:
        storage = locate(run_dir)
        if storage.is_local:
            return cls(storage, storage.local_path())
        tag = hashlib.sha256(storage.uri.encode()).hexdigest()[:12]
        return cls(storage, node_scratch(cluster, node_id) / f"run-{storage.name}-{tag}")

    @property
    def remote(self) -> bool:
        return not self.storage.is_local

    def path(self, *parts: str) -> Path:
        return self.local.joinpath(*parts)

    def at(self, *parts: str) -> Location:
        return self.storage.join(*parts)

    def publish(self, *parts: str) -> None:
        """Copy this process's file to run storage (nothing to do when they are one place)."""
        if self.remote:
            upload_file(self.path(*parts), self.at(*parts), verify=False)

    def publish_tree(self, *parts: str) -> None:
        """Replace the stored directory with this process's copy (nothing when one place)."""
        if self.remote:
            self.at(*parts).delete_tree()
            upload_dir(self.path(*parts), self.at(*parts))

    def fetch(self, *parts: str) -> bool:
        """Bring the stored file into `local` (nothing to do when they are one place); whether
        it exists."""
        if not self.remote:
            return self.path(*parts).is_file()
        if not self.at(*parts).is_file():
            return False
        download_file(self.at(*parts), self.path(*parts))
        return True


def check_tracking(config: StageConfig) -> None:
    """With a remote run dir, MLflow must be a server every node reaches: a `sqlite:`/`file:`
    tracking URI would land in a stray file on whichever node runs rank 0. Raises `ConfigError`
    (one line) unless tracking is off."""
    run_dir = config.run_dir or str(config.resolved_run_dir)
    uri = config.tracking.uri
    if not config.tracking.enabled or not is_uri(run_dir) or not uri.startswith(_LOCAL_TRACKING):
        return
    raise ConfigError(
        f"tracking.uri={uri!r} is a file on whichever node runs rank 0, but the run dir "
        f"{run_dir} is remote storage: use an MLflow server every node reaches "
        "(tracking.uri=http(s)://HOST:PORT) or tracking.enabled=false"
    )
