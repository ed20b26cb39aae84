"""Asking a training run to checkpoint and stop cleanly.

Two ways in, one answer: a signal to this process (SIGTERM from a scheduler or `vitpipe jobs
stop`; SIGINT from Ctrl-C), or the STOP file in the run dir, which any process on any node can
create. The driver turns its signals into the file (its workers may run elsewhere); a training
process also listens itself, where it owns the main thread. A second signal aborts at once.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

from pipelines.storage import Location


class StopRequest:
    """`location`: the STOP file; None where only signals count (`vitpipe shard`)."""

    def __init__(self, location: Location | None = None):
        self.location = location
        self._signalled = 0

    def signalled(self) -> bool:
        return self._signalled > 0

    def requested(self) -> bool:
        """A signal, or the STOP file (a storage read: on a cluster, one rank polls it)."""
        return self.signalled() or (self.location is not None and self.location.exists())

    def clear(self) -> None:
        if self.location is not None:
            self.location.delete()

    @contextlib.contextmanager
    def on_signals(self, *signums: int, touch_file: bool = False) -> Iterator[None]:
        """Within the block, the first of `signums` requests a stop (and creates the file when
        `touch_file`); a second one raises KeyboardInterrupt. Signals reach the main thread
        only: elsewhere this does nothing and the file still works."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {signum: signal.getsignal(signum) for signum in signums}

        def handler(signum, frame):
            self._signalled += 1
            if self._signalled > 1:
                raise KeyboardInterrupt(f"{signal.Signals(signum).name} twice: aborting")
            if touch_file and self.location is not None:
                self.location.write_bytes_atomic(b"")

        for signum in signums:
            signal.signal(signum, handler)
        try:
            yield
        finally:
            for signum, old in previous.items():
                signal.signal(signum, old)
