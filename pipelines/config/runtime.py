"""`tracking:` and `cluster:` — where metrics go and where the workers run."""

from __future__ import annotations

import string
from typing import Any

from pydantic import Field, model_serializer, model_validator

from pipelines.section import Section


class TrackingSection(Section):
    enabled: bool = True
    uri: str = "sqlite:///mlflow.db"
    experiment: str = "vitpipe"
    required: bool = True
    run_name: str | None = None
    registered_model: str | None = Field(None, description="None: <experiment>-<run name>")

    @model_validator(mode="after")
    def _check_uri(self) -> TrackingSection:
        allowed = ("sqlite:///", "http://", "https://", "file:", "databricks", "postgresql")
        if not self.uri.startswith(allowed):
            raise ValueError(
                f"tracking.uri={self.uri!r} is not a tracking URI; allowed: sqlite:///PATH, "
                "http(s)://HOST:PORT, file:PATH, postgresql://..."
            )
        return self


class ClusterSection(Section):
    """Where the workers run. `num_workers` is a count, or `[min, max]` for elastic training
    (Ray Train restarts the group on what is left when a node dies): the field then holds the
    max, so code that needs one number (plans, DeepSpeed config, capacity) keeps reading it,
    and `min_workers` holds the min. A dumped config writes `num_workers: [min, max]` back."""

    address: str | None = Field(None, description="None: start a local Ray bound to 127.0.0.1")
    num_workers: int = Field(
        2, ge=1, le=100_000, description="a count, or [min, max]: then the max"
    )
    min_workers: int | None = Field(None, ge=1, description="set by num_workers: [min, max]")
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0, le=4096)
    torch_threads: int | None = Field(
        None,
        ge=1,
        le=4096,
        description="torch threads per process; None: cpus_per_worker on Ray, all cores locally",
    )
    resources_per_worker: dict[str, float] = {}
    max_failures: int = Field(0, ge=-1, le=10_000)
    storage_path: str | None = Field(None, description="None: <run dir>/ray")
    collective_timeout_s: int = Field(
        1800,
        ge=10,
        le=86_400,
        description="how long a rank waits in a collective for the others (universal "
        "conversion and uploads happen while the others wait in a barrier)",
    )
    local_scratch: str | None = Field(
        None, description="node-local staging dir; None: a temp dir; {node_id} is replaced"
    )

    @model_validator(mode="before")
    @classmethod
    def _split_range(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("num_workers"), list | tuple):
            return data
        value = data["num_workers"]
        if len(value) != 2 or not all(type(v) is int for v in value):
            raise ValueError(
                f"cluster.num_workers={value!r}: expected a worker count or [min, max] "
                "(two integers)"
            )
        if data.get("min_workers") is not None:
            raise ValueError(
                "cluster.min_workers: set by cluster.num_workers: [min, max]; give one of them"
            )
        return {**data, "num_workers": value[1], "min_workers": value[0]}

    @model_validator(mode="after")
    def _check(self) -> ClusterSection:
        if self.min_workers is not None and self.min_workers > self.num_workers:
            raise ValueError(
                f"cluster.num_workers=[{self.min_workers}, {self.num_workers}]: the minimum "
                "must not exceed the maximum"
            )
        scratch = self.local_scratch
        if scratch is not None:
            if "://" in scratch:
                raise ValueError(
                    f"cluster.local_scratch={scratch!r} must be a path on each node's own disk "
                    "(a staging area); run storage, which may be a URI, is the run dir"
                )
            fields = {name for _, name, _, _ in string.Formatter().parse(scratch) if name}
            if fields - {"node_id"}:
                raise ValueError(
                    f"cluster.local_scratch={scratch!r}: the only placeholder is {{node_id}}"
                )
        return self

    @model_serializer(mode="wrap")
    def _dump_range(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        low = data.pop("min_workers", None)
        if low is not None:
            data["num_workers"] = [low, data["num_workers"]]
        return data

    @property
    def elastic(self) -> bool:
        return self.min_workers is not None and self.min_workers < self.num_workers

    @property
    def worker_range(self) -> tuple[int, int]:
        """(min, max) workers; equal when the count is fixed."""
        return (
            self.num_workers if self.min_workers is None else self.min_workers,
            self.num_workers,
        )

    @property
    def scaling_num_workers(self) -> int | tuple[int, int]:
        """What Ray Train's `ScalingConfig(num_workers=...)` takes: a count or (min, max)."""
        return self.worker_range if self.elastic else self.num_workers

    @property
    def restarts_allowed(self) -> int:
        """`FailureConfig(max_failures=...)`: unlimited (-1) for an elastic range, since Ray
        counts a lost node against it."""
        return -1 if self.elastic else self.max_failures
