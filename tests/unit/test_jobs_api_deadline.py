"""`vitpipe submit` and `vitpipe jobs` never hang on a Jobs API address: every call has one
overall deadline (`--timeout`), whether the server trickles bytes (which restarts a socket
timeout on each one) or answers the version probe and then goes silent. A tiny socket server
on 127.0.0.1 plays both; no Ray is started."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import ray

from launch.cli import main

from train_fixtures import tiny_job, write_yaml

TIMEOUT_S = 1.5


class BadJobsServer:
    """`trickle`: every answer is one byte every 0.2 s, never finished. `silent`: /api/version
    is answered as a Ray dashboard answers it; any other request is read and never answered."""

    def __init__(self, mode: str):
        self.mode = mode
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._stop = threading.Event()
        self._connections: list[socket.socket] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def start(self) -> BadJobsServer:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._listener.close()
        for conn in self._connections:
            conn.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self._connections.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            while not self._stop.is_set():
                request = conn.recv(65536)
                if not request:
                    return
                if self.mode == "trickle":
                    for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000:
                        if self._stop.wait(0.2):
                            return
                        conn.sendall(bytes([byte]))
                    return
                if not request.startswith(b"GET /api/version"):
                    self._stop.wait()
                    return
                body = json.dumps({"version": "4", "ray_version": ray.__version__}).encode()
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
        except OSError:
            return


@pytest.fixture(params=["trickle", "silent"])
def bad_server(request) -> Iterator[BadJobsServer]:
    server = BadJobsServer(request.param).start()
    yield server
    server.stop()


def _ends_in_one_line(argv: list[str], capsys) -> str:
    started = time.monotonic()
    code = main(argv)
    elapsed = time.monotonic() - started
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code != 0, err
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert elapsed < 4 * TIMEOUT_S + 2, f"{argv[0]} took {elapsed:.1f} s"
    return err[0]


def test_submit_and_jobs_end_within_their_deadline(bad_server, tmp_path, capsys):
    address = ["--address", bad_server.url, "--timeout", str(TIMEOUT_S)]
    line = _ends_in_one_line(["jobs", "list", *address], capsys)
    assert bad_server.url in line and f"in {TIMEOUT_S:g} s" in line, line
    config = write_yaml(tiny_job(tmp_path / "shards", tmp_path), tmp_path / "job.yaml")
    line = _ends_in_one_line(["submit", "-c", str(config), "--no-wait", *address], capsys)
    assert bad_server.url in line and f"in {TIMEOUT_S:g} s" in line, line
