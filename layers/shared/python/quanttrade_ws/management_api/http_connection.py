"""One keep-alive HTTP/1.1 connection to the Management API, and the parsing of its responses."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from quanttrade_ws.management_api.call_batch import Call, CallBatch
    from quanttrade_ws.management_api.connection_pool import ConnectionPool

MAX_HEAD_BYTES = 64 * 1024


class HttpConnection:
    """One keep-alive HTTP/1.1 connection, as an asyncio protocol (duck-typed, so asyncio stays a lazy import).

    At most one request is in flight; its response is parsed from the read
    callback and handed to the batch, which puts the next request on the wire
    from the same callback.
    """

    __slots__ = (
        "_body_parts",
        "_buffer",
        "_chunked",
        "_close_after",
        "_error_type",
        "_remaining",
        "_status",
        "_until_eof",
        "batch",
        "call",
        "dead",
        "idle_since",
        "pool",
        "received",
        "sent_at",
        "served",
        "transport",
    )

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        self.transport: Any = None
        self.batch: CallBatch | None = None
        self.call: Call | None = None
        self.dead = False
        self.served = 0
        self.received = False
        self.sent_at = 0.0
        self.idle_since = 0.0
        self._reset_response()

    def _reset_response(self) -> None:
        self._buffer = b""
        self._status = 0
        self._remaining = -1
        self._chunked = False
        self._until_eof = False
        self._close_after = False
        self._error_type = b""
        self._body_parts: list[bytes] = []

    def send(self, batch: CallBatch, call: Call) -> None:
        self.batch = batch
        self.call = call
        self.received = False
        self.sent_at = time.monotonic()
        self.transport.write(call.request)

    def abort(self) -> None:
        self.call = None
        self.batch = None
        if self.transport is not None:
            self.transport.abort()
        self.pool.forget(self)

    # asyncio protocol interface

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def pause_writing(self) -> None:
        """One request in flight per connection bounds the write buffer already."""

    def resume_writing(self) -> None:
        """See pause_writing."""

    def eof_received(self) -> bool:
        if self._until_eof and self.call is not None:
            self._complete(self._status, b"".join(self._body_parts), reusable=False)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._until_eof and self.call is not None:
            self._complete(self._status, b"".join(self._body_parts), reusable=False)
        call, batch = self.call, self.batch
        self.call = None
        self.batch = None
        self.pool.forget(self)
        if call is not None and batch is not None:
            batch.on_connection_lost(self, call, f"connection lost: {exc or 'closed by server'}")

    def data_received(self, data: bytes) -> None:
        if self.call is None:
            # Bytes nobody asked for (say, a 408 before an idle close): this connection can't be trusted.
            self.transport.abort()
            self.pool.forget(self)
            return
        self.received = True
        buffer = self._buffer + data if self._buffer else data
        try:
            self._parse(buffer)
        except (ValueError, IndexError) as exc:
            call, batch = self.call, self.batch
            self.abort()
            if call is not None and batch is not None:
                batch.on_transport_error(call, f"unparseable response: {exc}")

    def _parse(self, buffer: bytes) -> None:
        if not self._status:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > MAX_HEAD_BYTES:
                    raise ValueError("response head too large")
                self._buffer = buffer
                return
            head = buffer[:end]
            buffer = buffer[end + 4 :]
            if head[:5] != b"HTTP/":
                raise ValueError(f"not an HTTP response: {head[:40]!r}")
            status = int(head[9:12])
            if status < 200:
                # Informational responses precede the real one.
                self._buffer = b""
                if buffer:
                    self._parse(buffer)
                return
            self._status = status
            lower = head.lower()
            self._remaining = _header_int(lower, b"\r\ncontent-length:")
            connection = _header(lower, b"\r\nconnection:")
            self._close_after = b"close" in connection or (head[5:8] == b"1.0" and b"keep-alive" not in connection)
            if status >= 300:
                self._error_type = _header(lower, b"\r\nx-amzn-errortype:", head)
            if status == 204 or status == 304:
                self._remaining = 0
            elif b"\r\ntransfer-encoding:" in lower:
                # Transfer-Encoding wins over Content-Length (RFC 9112 6.3).
                self._chunked = b"chunked" in _header(lower, b"\r\ntransfer-encoding:")
                self._until_eof = not self._chunked
            elif self._remaining < 0:
                self._until_eof = True
        if self._chunked:
            parsed = _dechunk(buffer)
            if parsed is None:
                self._buffer = buffer
                return
            self._complete(self._status, parsed, reusable=not self._close_after)
        elif self._until_eof:
            self._body_parts.append(buffer)
            self._buffer = b""
        elif len(buffer) >= self._remaining:
            # Bytes beyond the body answer nothing we asked: finish this response, then retire the connection.
            reusable = not self._close_after and len(buffer) == self._remaining
            self._complete(self._status, buffer[: self._remaining], reusable=reusable)
        else:
            self._buffer = buffer

    def _complete(self, status: int, body: bytes, reusable: bool) -> None:
        call, batch, error_type = self.call, self.batch, self._error_type
        self.call = None
        self.batch = None
        self.served += 1
        self._reset_response()
        if not reusable:
            self.transport.close()
            self.pool.forget(self)
        if call is not None and batch is not None:
            batch.on_response(self, call, status, body, error_type, reusable)


def _header(lower_head: bytes, name: bytes, head: bytes | None = None) -> bytes:
    """A header's value, found in the lowercased head; taken from `head` when its case matters."""
    start = lower_head.find(name)
    if start < 0:
        return b""
    end = lower_head.find(b"\r\n", start + 2)
    return (lower_head if head is None else head)[start + len(name) : end if end >= 0 else None].strip()


def _header_int(lower_head: bytes, name: bytes) -> int:
    value = _header(lower_head, name)
    return int(value) if value else -1


def _dechunk(buffer: bytes) -> bytes | None:
    """The body of a complete chunked message, or None while more bytes are needed."""
    parts: list[bytes] = []
    position = 0
    while True:
        line_end = buffer.find(b"\r\n", position)
        if line_end < 0:
            return None
        size = int(buffer[position:line_end].split(b";", 1)[0], 16)
        position = line_end + 2
        if size == 0:
            # The last chunk is followed by optional trailer lines and then an empty line.
            if buffer[position : position + 2] == b"\r\n" or buffer.find(b"\r\n\r\n", position) >= 0:
                return b"".join(parts)
            return None
        if len(buffer) < position + size + 2:
            return None
        parts.append(buffer[position : position + size])
        position += size + 2
