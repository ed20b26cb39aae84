"""Errors a user can cause. The CLI prints them as one line and exits non-zero."""

from __future__ import annotations


class VitpipeError(Exception):
    """Base class: anything a user can fix by changing input, config or environment."""

    exit_code = 1


class ConfigError(VitpipeError):
    """The config is invalid; carries every problem found, not just the first."""

    exit_code = 2

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


class DataError(VitpipeError):
    """A dataset, shard or manifest cannot be used as asked."""


class CheckpointError(VitpipeError):
    """A checkpoint is missing, incomplete or does not match the job."""


class TrackingError(VitpipeError):
    """The tracking server cannot be reached or refused a request."""


class StorageError(VitpipeError):
    """Run storage (a local dir, a shared filesystem or an object store) failed a transfer."""
