"""Object storage on 127.0.0.1 for tests and benchmarks: moto's S3 server with a log of every
request it answers, and a TCP proxy in front of it that adds latency per request, caps bandwidth
and can be cut and restored (an outage). No internet, no mocks: botocore and pyarrow talk HTTP to
a real server through a real socket.

    server = S3Server(port).start()                  # AWS_ENDPOINT_URL=http://127.0.0.1:<port>
    proxy = ThrottledProxy(server.port, latency_s=0.02, bytes_per_s=50e6).start()
    uri = f"s3://bucket/prefix?endpoint_override=127.0.0.1:{proxy.port}&scheme=http"
    mark = server.mark(); ...; server.requests_since(mark)   # [Request(method, path, ...)]
    proxy.cut(); ...; proxy.restore()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

_CHUNK = 64 * 1024


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # /bucket/key (path-style) or /key
    query: str
    range: str | None  # the Range header, e.g. "bytes=0-8388607"
    status: int
    bytes_out: int  # body bytes the server sent


class _RequestLog:
    """WSGI middleware: one `Request` per call, with the body bytes actually sent."""

    def __init__(self, app: Any):
        self.app = app
        self.requests: list[Request] = []
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any):
        status: list[int] = [0]

        def recording_start(code: str, headers: Any, *args: Any):
            status[0] = int(code.split()[0])
            return start_response(code, headers, *args)

        body = self.app(environ, recording_start)
        return self._counted(environ, status, body)

    def _counted(self, environ: dict[str, Any], status: list[int], body: Any):
        sent = 0
        try:
            for chunk in body:
                sent += len(chunk)
                yield chunk
        finally:
            if hasattr(body, "close"):
                body.close()
            request = Request(
                environ.get("REQUEST_METHOD", ""),
                environ.get("PATH_INFO", ""),
                environ.get("QUERY_STRING", ""),
                environ.get("HTTP_RANGE"),
                status[0],
                sent,
            )
            with self._lock:
                self.requests.append(request)


class S3Server:
    """moto's S3 server on 127.0.0.1:`port`, threaded, in this process."""

    def __init__(self, port: int):
        self.port = port
        self._log: _RequestLog | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> S3Server:
        from moto.moto_server.werkzeug_app import (
            DomainDispatcherApplication,
            MotoRequestHandler,
            create_backend_app,
        )
        from werkzeug.serving import make_server

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request otherwise
        self._log = _RequestLog(DomainDispatcherApplication(create_backend_app))
        self._server = make_server(
            "127.0.0.1", self.port, self._log, threaded=True, request_handler=MotoRequestHandler
        )
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._thread.join()

    def mark(self) -> int:
        """A point in the request log; `requests_since(mark)` returns what came after it."""
        assert self._log is not None, "start() first"
        return len(self._log.requests)

    def requests_since(self, mark: int) -> list[Request]:
        assert self._log is not None, "start() first"
        return list(self._log.requests[mark:])


class _Bucket:
    """A token bucket shared by every connection of a proxy (one link, one cap)."""

    def __init__(self, bytes_per_s: float | None):
        self.rate = bytes_per_s
        self._free_at = time.monotonic()

    async def take(self, n: int) -> None:
        if not self.rate:
            return
        now = time.monotonic()
        start = max(now, self._free_at)
        self._free_at = start + n / self.rate
        if self._free_at > now:
            await asyncio.sleep(self._free_at - now)


class ThrottledProxy:
    """A TCP proxy on 127.0.0.1 in front of `target_port`: `latency_s` before each request's
    first byte reaches the server (a request starts when the client sends after the server
    answered, or on a new connection), at most `bytes_per_s` through it in all (both ways), and
    `cut()` drops every connection and refuses new ones until `restore()`."""

    def __init__(
        self, target_port: int, *, latency_s: float = 0.0, bytes_per_s: float | None = None
    ):
        self.target_port = target_port
        self.latency_s = latency_s
        self.bytes_per_s = bytes_per_s
        self.port = 0
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._cut = False
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> ThrottledProxy:
        self._thread.start()
        self._call(self._listen())
        return self

    def stop(self) -> None:
        self._call(self._close(stop_listening=True))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()

    def cut(self) -> None:
        """Storage unreachable: every open connection is reset, new ones are closed at once."""
        self._cut = True
        self._call(self._close(stop_listening=False))

    def restore(self) -> None:
        self._cut = False

    def set_limits(self, *, latency_s: float | None = None, bytes_per_s: float | None = None):
        if latency_s is not None:
            self.latency_s = latency_s
        if bytes_per_s is not None:
            self.bytes_per_s = bytes_per_s
            self._bucket.rate = bytes_per_s

    # -- inside the proxy's event loop ---------------------------------------------------------

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    async def _listen(self) -> None:
        self._bucket = _Bucket(self.bytes_per_s)
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close(self, *, stop_listening: bool) -> None:
        for writer in list(self._writers):
            with contextlib.suppress(Exception):
                writer.transport.abort()
        self._writers.clear()
        if stop_listening and self._server is not None:
            self._server.close()

    async def _serve(self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter):
        if self._cut:
            client_out.transport.abort()
            return
        try:
            server_in, server_out = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_out.transport.abort()
            return
        self.connections += 1
        self._writers.update((client_out, server_out))
        answered = [True]  # a new connection starts with a request
        await asyncio.gather(
            self._pipe(client_in, server_out, answered, upstream=True),
            self._pipe(server_in, client_out, answered, upstream=False),
            return_exceptions=True,
        )
        for writer in (client_out, server_out):
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        answered: list[bool],
        *,
        upstream: bool,
    ) -> None:
        try:
            while data := await reader.read(_CHUNK):
                if upstream and answered[0]:
                    answered[0] = False
                    if self.latency_s:
                        await asyncio.sleep(self.latency_s)
                elif not upstream:
                    answered[0] = True
                await self._bucket.take(len(data))
                writer.write(data)
                await writer.drain()
        finally:
            with contextlib.suppress(Exception):
                writer.write_eof()
