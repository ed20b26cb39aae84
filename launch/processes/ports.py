"""The one free-port helper: a TCP port nothing listens on yet, on the loopback interface."""

from __future__ import annotations

import socket


def free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
