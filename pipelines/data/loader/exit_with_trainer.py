"""Dataloader worker processes end with the training process that started them.

torch's own check in a worker (`ManagerWatchdog`) watches the worker's *parent*, which under the
forkserver start method is the forkserver, not the trainer, and it looks only between batches.
So each worker gets the trainer's pid (`worker_init_fn=exit_with_this_process()`) and a daemon
thread that waits on it: a Linux pidfd becomes readable the moment the trainer is gone (no pid
reuse race); elsewhere the pid is polled once a second. Then the worker exits at once, and takes
the trainer's forkserver with it (a forkserver serves one process; left alone it lingers while
its interpreter, torch preloaded, shuts down).
"""

from __future__ import annotations

import contextlib
import functools
import os
import select
import signal
import threading
import time
from collections.abc import Callable

EXIT_STATUS = 1
_POLL_S = 1.0


def exit_with(trainer_pid: int) -> Callable[[int], None]:
    """A picklable `worker_init_fn` that ties each worker's life to `trainer_pid`."""
    return functools.partial(_start_watch, trainer_pid)


def exit_with_this_process() -> Callable[[int], None]:
    """`exit_with` the calling process: what the process that builds a DataLoader passes."""
    return exit_with(os.getpid())


def _start_watch(trainer_pid: int, worker_id: int) -> None:
    server_fd = None
    if os.getppid() != trainer_pid:  # started by the trainer's forkserver
        try:
            server_fd = os.pidfd_open(os.getppid())
        except (AttributeError, OSError):
            server_fd = None
    threading.Thread(
        target=_wait_then_exit,
        args=(trainer_pid, server_fd),
        name="exit-with-trainer",
        daemon=True,
    ).start()


def _wait_then_exit(pid: int, server_fd: int | None) -> None:
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        _exit(server_fd)  # gone before we looked
    except (AttributeError, OSError):
        fd = None  # not Linux >= 5.3
    if fd is not None:
        select.select([fd], [], [])  # readable once the process has exited
        _exit(server_fd)
    while True:
        time.sleep(_POLL_S)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            _exit(server_fd)
        except PermissionError:
            continue


def _exit(server_fd: int | None) -> None:
    if server_fd is not None:
        with contextlib.suppress(OSError):
            signal.pidfd_send_signal(server_fd, signal.SIGKILL)
    os._exit(EXIT_STATUS)
