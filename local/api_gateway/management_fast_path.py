"""The Management API's fast path: plain HTTP/1.1 calls answered without aiohttp's request machinery.

A fan-out posts one HTTP request per message, so per message the gateway's
event loop mostly serves requests; aiohttp's protocol, request, router and
response objects were about half of that (py-spy, one event to 1,000
subscribers). Every connection to the gateway's port therefore starts here.

A request in the plain form every SDK and the project's own client send is
parsed and answered here:

* `POST`, `GET` or `DELETE` on `/@connections/{id}` or `/{stage}/@connections/{id}`,
  the stage and id in plain characters (`=` may come as `%3D`), no query;
* `HTTP/1.1`, an ASCII head within aiohttp's line limit, well-formed header lines;
* at most one `Content-Length`, within the largest message; no `Transfer-Encoding`,
  `Expect`, `Upgrade` or `Connection` header.

It is answered by the same `ManagementApi.answer` that aiohttp's route calls,
and written as the bytes aiohttp writes for that response, together with the
gateway's other writes of the event loop's turn (`turn_writes`). The first request
that is anything else (a WebSocket upgrade, `/health`, the admin API, a
request aiohttp should judge or refuse) hands the connection, with every byte
not yet consumed, to aiohttp for good.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from email.utils import formatdate
from typing import Any

from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE

from local.api_gateway.access_log import access_logger
from local.api_gateway.error_responses import management_error
from local.api_gateway.lambda_events import request_time
from local.api_gateway.management_api import ManagementApi, ManagementRequest
from local.api_gateway.management_faults import INTERNAL_ERROR
from local.api_gateway.turn_writes import TurnWrites

logger = logging.getLogger("quanttrade.local.gateway")

MAX_HEAD_BYTES = 8190  # aiohttp's request-line limit: a longer head is aiohttp's to judge
KEEPALIVE_SECONDS = 3630.0  # aiohttp's RequestHandler default: an idle connection is closed after this
PAUSE_READING_ABOVE = 1 << 20  # bytes buffered behind an unanswered request before the socket is not read

_REQUEST_LINE = re.compile(
    rb"(POST|GET|DELETE) (/(?:([A-Za-z0-9_\-]+)/)?@connections/((?:[A-Za-z0-9_\-=]|%3[Dd])+)) HTTP/1\.1\Z"
)
# RFC 9110 field: a token, a colon, a value of visible characters (spaces and tabs inside only).
_HEADER_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*((?:[\x21-\x7e][\x20-\x7e\t]*)?)\Z")
_HANDED_OVER_HEADERS = frozenset({"transfer-encoding", "expect", "upgrade", "connection"})
_DIGITS = re.compile(r"[0-9]{1,10}\Z")
_NO_LENGTH = frozenset({204, 304})  # aiohttp writes no Content-Length for these


class ManagementFastPath:
    """The gateway port's protocol factory: a `FastPathConnection` per connection, which may hand it to aiohttp."""

    def __init__(
        self, api: ManagementApi, aiohttp_protocol: Callable[[], asyncio.Protocol], writes: TurnWrites
    ) -> None:
        self.api = api
        self.aiohttp_protocol = aiohttp_protocol
        self.writes = writes  # answers go out with the turn's other writes
        self.connections: set[FastPathConnection] = set()
        self.handed_over = 0  # connections given to aiohttp

    def __call__(self) -> FastPathConnection:
        return FastPathConnection(self)

    def close(self) -> None:
        """Close every connection still served here (the gateway stops); aiohttp closes its own."""
        for connection in list(self.connections):
            connection.close()


class FastPathConnection(asyncio.Protocol):
    """One client connection: its Management API calls answered in order, one at a time, as aiohttp would."""

    def __init__(self, owner: ManagementFastPath) -> None:
        self._owner = owner
        self._loop = asyncio.get_running_loop()
        self._transport: Any = None
        self._remote: str | None = None
        self._buffer = b""
        self._answering: asyncio.Task[None] | None = None  # the request being answered
        self._reading_paused = False
        self._writing_paused = False
        self._closed = False
        self._last_active = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------ asyncio protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        peer = transport.get_extra_info("peername")
        self._remote = peer[0] if isinstance(peer, tuple) and peer else None
        self._owner.connections.add(self)
        self._last_active = self._loop.time()
        self._idle_timer = self._loop.call_later(KEEPALIVE_SECONDS, self._close_if_idle)

    def data_received(self, data: bytes) -> None:
        self._last_active = self._loop.time()
        self._buffer = self._buffer + data if self._buffer else data
        if self._answering is not None or self._writing_paused:
            if len(self._buffer) > PAUSE_READING_ABOVE and not self._reading_paused:
                self._reading_paused = True
                self._transport.pause_reading()
            return
        self._take_requests()

    def eof_received(self) -> bool:
        # As aiohttp: the peer's EOF closes the connection, and a call still being answered sees its
        # transport closing (a delayed post whose caller gave up is not carried out).
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._forget()

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._take_requests()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._transport.close()
        if self._answering is not None:
            self._answering.cancel()  # the gateway stops: a call held by an injected delay is not carried out
        self._forget()

    # ------------------------------------------------------------ requests

    def _take_requests(self) -> None:
        """Start answering the next complete request in the buffer; hand the connection over if it is not ours."""
        if self._closed or self._answering is not None or self._writing_paused:
            return
        if self._reading_paused:
            self._reading_paused = False
            self._transport.resume_reading()
        buffer = self._buffer
        if not buffer:
            return
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            line_end = buffer.find(b"\r\n")
            if len(buffer) > MAX_HEAD_BYTES or (line_end >= 0 and _REQUEST_LINE.match(buffer, 0, line_end) is None):
                self._hand_over()
            return
        head = _parse_head(buffer, end, self._owner.api.config.max_message_bytes)
        if head is None:
            self._hand_over()
            return
        method, target, stage, connection_id, headers, length = head
        start = end + 4
        if len(buffer) < start + length:
            return  # the body is still coming
        self._buffer = buffer[start + length :]
        call = ManagementRequest(
            method, target, headers, buffer[start : start + length], stage, connection_id, self._remote, self._transport
        )
        self._answering = self._loop.create_task(self._answer(call))

    async def _answer(self, call: ManagementRequest) -> None:
        started = time.monotonic()
        try:
            response = await self._owner.api.answer(call)
        except Exception:
            logger.exception("Management API call %s %s failed", call.method, call.connection_id)
            response = management_error(*INTERNAL_ERROR)
        if not self._closed and not self._transport.is_closing():
            self._owner.writes.write(self._transport, _response_bytes(response))
            if access_logger.isEnabledFor(logging.DEBUG):
                _log(call, response, time.monotonic() - started)
        self._answering = None
        self._last_active = self._loop.time()
        self._take_requests()

    def _hand_over(self) -> None:
        """From now on aiohttp serves this connection, starting with the bytes not yet consumed."""
        self._owner.writes.flush()  # this connection's earlier answers go before any of aiohttp's
        self._forget()
        self._owner.handed_over += 1
        transport, buffer = self._transport, self._buffer
        self._buffer = b""
        self._closed = True  # to this object: the connection is aiohttp's
        protocol = self._owner.aiohttp_protocol()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if self._reading_paused:
            transport.resume_reading()
        if buffer:
            protocol.data_received(buffer)

    def _close_if_idle(self) -> None:
        self._idle_timer = None
        if self._closed:
            return
        idle = self._loop.time() - self._last_active
        if self._answering is None and idle >= KEEPALIVE_SECONDS:
            self.close()  # a request left half-sent that long is not coming either
        else:
            self._idle_timer = self._loop.call_later(max(KEEPALIVE_SECONDS - idle, 1.0), self._close_if_idle)

    def _forget(self) -> None:
        self._owner.connections.discard(self)
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None


def _parse_head(
    buffer: bytes, end: int, max_body: int
) -> tuple[str, str, str | None, str, list[tuple[str, str]], int] | None:
    """(method, target, stage, connection id, headers, body length) of a plain Management API call; else None."""
    if end > MAX_HEAD_BYTES:
        return None
    head = buffer[:end]
    if not head.isascii():
        return None
    lines = head.split(b"\r\n")
    request = _REQUEST_LINE.match(lines[0])
    if request is None:
        return None
    headers: list[tuple[str, str]] = []
    length: int | None = None
    for line in lines[1:]:
        field = _HEADER_LINE.match(line)
        if field is None:
            return None
        name, value = field[1].decode(), field[2].decode().rstrip(" \t")
        lowered = name.lower()
        if lowered in _HANDED_OVER_HEADERS:
            return None
        if lowered == "content-length":
            if length is not None or _DIGITS.match(value) is None:
                return None
            length = int(value)
        headers.append((name, value))
    if length is not None and length > max_body:
        return None  # aiohttp's route answers 413 without reading it
    stage = request[3]
    return (
        request[1].decode(),
        request[2].decode(),
        None if stage is None else stage.decode(),
        _unescaped(request[4].decode()),
        headers,
        length or 0,
    )


def _unescaped(path: str) -> str:
    # `%3D` is the only escape `_REQUEST_LINE` lets through: decoding it gives the path as aiohttp decodes it.
    return path.replace("%3D", "=").replace("%3d", "=")


_date_second = -1
_date_value = ""


def _http_date() -> str:
    global _date_second, _date_value
    now = int(time.time())
    if now != _date_second:
        _date_second, _date_value = now, formatdate(now, usegmt=True)
    return _date_value


def _response_bytes(response: web.Response) -> bytes:
    """What aiohttp writes for `response` on a keep-alive HTTP/1.1 connection, byte for byte."""
    status = response.status
    body = _body_of(response)
    lines = [f"HTTP/1.1 {status} {response.reason}"]
    lines += [f"{name}: {value}" for name, value in response.headers.items()]
    if status not in _NO_LENGTH and "Content-Length" not in response.headers:
        lines.append(f"Content-Length: {len(body)}")
    lines.append(f"Date: {_http_date()}")
    lines.append(f"Server: {SERVER_SOFTWARE}")
    lines.append("\r\n")
    return "\r\n".join(lines).encode("latin-1") + body


def _body_of(response: web.Response) -> bytes:
    body = response.body
    if body is None:
        return b""
    if not isinstance(body, bytes):
        raise TypeError(f"a Management API answer's body must be bytes, not {type(body).__name__}")
    return body


def _log(call: ManagementRequest, response: web.Response, seconds: float) -> None:
    # The line aiohttp's access log (`HttpAccessLogger`) writes for a Management API call, at DEBUG.
    access_logger.debug(
        '%s - - [%s] "%s %s" %d %s %.1fms',
        call.remote,
        request_time(time.time()),
        call.method,
        _unescaped(call.raw_path),
        response.status,
        len(_body_of(response)),
        seconds * 1000,
    )
