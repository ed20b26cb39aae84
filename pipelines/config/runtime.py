"""`tracking:` and `cluster:` — where metrics go and where the workers run."""

from __future__ import annotations

from pydantic import Field, model_validator

from pipelines.config.base import Section


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
    address: str | None = Field(None, description="None: start a local Ray bound to 127.0.0.1")
    num_workers: int = Field(2, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    torch_threads: int | None = Field(
        None,
        ge=1,
        description="torch threads per process; None: cpus_per_worker on Ray, all cores locally",
    )
    resources_per_worker: dict[str, float] = {}
    max_failures: int = Field(0, ge=-1)
    storage_path: str | None = Field(None, description="None: <run dir>/ray")
