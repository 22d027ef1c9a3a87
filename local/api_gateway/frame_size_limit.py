"""API Gateway's per-frame size limit (32 KB), in front of aiohttp's WebSocket parser.

This is the one module that reaches into aiohttp's internals (the protocol's
payload parser and the response's reader queue).
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import WSCloseCode, web
from aiohttp.http_websocket import WebSocketError
from aiohttp.web_request import BaseRequest

from local.api_gateway.turn_writes import TurnWrites

logger = logging.getLogger("quanttrade.local.gateway")


class FrameSizeGuard:
    """Sits in front of aiohttp's WebSocket parser and fails the connection on an oversized data frame.

    aiohttp limits whole messages only; API Gateway also limits each frame
    (32 KB), so a client that sends a 40 KB message unfragmented, as browsers
    do, is cut off on AWS. Only frame headers are inspected; bytes pass through
    untouched.
    """

    __slots__ = ("_header", "_limit", "_parser", "_queue", "_skip", "_tripped")

    def __init__(self, parser: Any, queue: Any, limit: int) -> None:
        self._parser = parser
        self._queue = queue
        self._limit = limit
        self._header = bytearray()
        self._skip = 0
        self._tripped = False

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        if self._tripped:
            return True, b""
        cut = self.scan(data)
        if cut < 0:
            return self._parser.feed_data(data)
        if cut:
            self._parser.feed_data(data[:cut])
        self.trip()
        return True, b""

    def feed_eof(self) -> None:
        self._parser.feed_eof()

    def trip(self) -> None:
        """Fail the connection with 1009: an oversized frame arrived."""
        self._tripped = True
        self._queue.set_exception(
            WebSocketError(WSCloseCode.MESSAGE_TOO_BIG, f"Frame size exceeds limit {self._limit}")
        )

    def scan(self, data: bytes) -> int:
        """Offset of the first oversized data frame's header in `data`, or -1."""
        header = self._header
        position, size = 0, len(data)
        while position < size:
            if self._skip:
                step = min(self._skip, size - position)
                self._skip -= step
                position += step
                continue
            frame_start = position - len(header)  # negative when the header began in an earlier chunk
            while len(header) < 2 or len(header) < _frame_header_length(header):
                if position >= size:
                    return -1
                target = 2 if len(header) < 2 else _frame_header_length(header)
                step = min(target - len(header), size - position)
                header += data[position : position + step]
                position += step
            length = header[1] & 0x7F
            if length == 126:
                length = int.from_bytes(header[2:4], "big")
            elif length == 127:
                length = int.from_bytes(header[2:10], "big")
            opcode = header[0] & 0x0F
            header.clear()
            if opcode <= 0x2 and length > self._limit:  # continuation, text, binary
                return max(frame_start, 0)
            self._skip = length
        return -1


def _frame_header_length(header: bytearray) -> int:
    second = header[1]
    length = second & 0x7F
    extended = 2 if length == 126 else 8 if length == 127 else 0
    return 2 + extended + (4 if second & 0x80 else 0)


class GatewayWebSocket(web.WebSocketResponse):
    """A WebSocketResponse with API Gateway's per-frame size limit in front of its parser, whose own messages
    and close go after the frames posted to it before them (which `writes` holds until the turn's end)."""

    def __init__(self, *, max_frame_bytes: int | None, writes: TurnWrites, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._max_frame_bytes = max_frame_bytes
        self._writes = writes

    async def send_str(self, data: str, compress: int | None = None) -> None:
        self._writes.flush()
        await super().send_str(data, compress)

    async def close(self, *, code: int = WSCloseCode.OK, message: bytes = b"", drain: bool = True) -> bool:
        self._writes.flush()
        return await super().close(code=code, message=message, drain=drain)

    def _post_start(self, request: BaseRequest, *args: Any, **kwargs: Any) -> None:
        protocol = request.protocol
        # Bytes that arrived with the upgrade request are fed to the parser inside
        # super(); the guard must see them too to stay in step with frame boundaries.
        tail = bytes(getattr(protocol, "_message_tail", b""))
        super()._post_start(request, *args, **kwargs)
        parser = getattr(protocol, "_payload_parser", None)
        queue = getattr(self, "_reader", None)
        if self._max_frame_bytes is None or parser is None or queue is None:
            if self._max_frame_bytes is not None:
                logger.warning("this aiohttp version hides its WebSocket parser: frame size limit not enforced")
            return
        guard = FrameSizeGuard(parser, queue, self._max_frame_bytes)
        if tail and guard.scan(tail) >= 0:
            guard.trip()
        protocol._payload_parser = guard
