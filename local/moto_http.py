"""The HTTP server in front of moto's WSGI app: keep-alive connections and a pool of reused threads.

werkzeug's development server, which moto ships with, closes every connection
after one response and starts a new thread for each: every DynamoDB, SQS and
EventBridge call of the stack paid a TCP handshake on both sides and a thread
start in moto. Here aiohttp parses HTTP (keep-alive, as the AWS endpoints and
the SDKs do) on one event-loop thread, and each request runs moto's WSGI app
on a pool thread. The pool is large because a thread is held for the whole of
an SQS long poll (up to 20 s) and the pumps, the simulator and the functions
long-poll and call at once.

Requests the app says are short (`inline`) run on the event-loop thread itself:
handing a request to a pool thread and its answer back costs two thread
switches, and the two threads then take the GIL from each other. For moto's
DynamoDB item operations, which run one at a time under one lock anyway, that
was measured at about an eighth of moto's CPU per request.
"""

from __future__ import annotations

import asyncio
import io
import socket
import sys
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import unquote

from aiohttp import web
from aiohttp.web_request import BaseRequest
from multidict import CIMultiDict

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
Inline = Callable[[dict[str, Any]], bool]

POOL_THREADS = 64
MAX_BODY = 32 * 1024 * 1024  # over any AWS request the stack makes (a BatchWriteItem is at most 16 MB)
# Set by aiohttp itself, or meaningless across the hop.
_NOT_COPIED = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "date", "server"})


class KeepAliveWsgiServer:
    """Serves `app` on host:port, bound at construction (a taken port raises OSError at once).

    The interface of the server it replaces: `server_port`, `serve_forever()` (blocks; run it on a thread),
    `shutdown()` and `server_close()`.
    """

    def __init__(
        self, host: str, port: int, app: WsgiApp, *, threads: int = POOL_THREADS, inline: Inline | None = None
    ) -> None:
        self._app = app
        self._inline = inline or (lambda environ: False)
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._socket.bind((host, port))
            self._socket.listen(1024)
        except OSError:
            self._socket.close()
            raise
        self.server_port: int = self._socket.getsockname()[1]
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="moto-request")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._stopped = threading.Event()

    def serve_forever(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        finally:
            loop.close()
            self._stopped.set()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def make_request(message: Any, payload: Any, protocol: Any, writer: Any, task: Any) -> BaseRequest:
            # aiohttp buffers 1 MB of body by default.
            return BaseRequest(message, payload, protocol, writer, task, loop, client_max_size=MAX_BODY)

        server = web.Server(self._handle, request_factory=make_request, access_log=None)
        listener = await loop.create_server(server, sock=self._socket)
        try:
            await self._stop.wait()
        finally:
            listener.close()
            await server.shutdown(0.5)

    def shutdown(self, timeout: float = 5.0) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(stop.set)
            self._stopped.wait(timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def server_close(self) -> None:
        self._socket.close()

    async def _handle(self, request: BaseRequest) -> web.StreamResponse:
        body = await request.read()
        environ = _environ(request, body, self.server_port)
        if self._inline(environ):
            status, headers, payload = _call(self._app, environ)
        else:
            status, headers, payload = await asyncio.get_running_loop().run_in_executor(
                self._pool, _call, self._app, environ
            )
        code, _, reason = status.partition(" ")
        response = web.Response(status=int(code), reason=reason or None, body=payload)
        for name, value in headers:
            if name.lower() not in _NOT_COPIED:
                response.headers.add(name, value)
        return response


def _environ(request: BaseRequest, body: bytes, port: int) -> dict[str, Any]:
    """The WSGI environ of a request, as werkzeug's server builds it for moto."""
    path, _, query = request.raw_path.partition("?")
    environ: dict[str, Any] = {
        "REQUEST_METHOD": request.method,
        "SCRIPT_NAME": "",
        "PATH_INFO": unquote(path, encoding="latin-1"),
        "QUERY_STRING": query,
        "RAW_URI": request.raw_path,
        "REQUEST_URI": request.raw_path,
        "SERVER_NAME": request.host.split(":")[0],
        "SERVER_PORT": str(port),
        "SERVER_PROTOCOL": f"HTTP/{request.version.major}.{request.version.minor}",
        "REMOTE_ADDR": request.remote or "127.0.0.1",
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    headers: CIMultiDict[str] = CIMultiDict(request.headers)
    if "Content-Type" in headers:
        environ["CONTENT_TYPE"] = headers["Content-Type"]
    for name in {name.lower() for name in headers}:
        if name in ("content-type", "content-length"):
            continue
        environ["HTTP_" + name.upper().replace("-", "_")] = ",".join(headers.getall(name))
    return environ


def _call(app: WsgiApp, environ: dict[str, Any]) -> tuple[str, list[tuple[str, str]], bytes]:
    """Run the WSGI app to completion on this (pool) thread: (status line, headers, body)."""
    answer: dict[str, Any] = {}
    written: list[bytes] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], Any]:
        answer["status"], answer["headers"] = status, headers
        return written.append

    result = app(environ, start_response)
    try:
        written.extend(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return answer["status"], answer["headers"], b"".join(written)
