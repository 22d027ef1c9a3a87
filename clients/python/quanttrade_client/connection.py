"""One WebSocket connection to the API: opening it, requests and their replies on it, and keeping it alive.

API Gateway closes a connection after 10 idle minutes, and WebSocket-level pings
do not count as activity, so `keepalive` sends the `ping` action instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from quanttrade_client.errors import (
    AuthFailed,
    ConnectionLost,
    ErrorCode,
    QuantTradeError,
    RateLimited,
    RequestTimeout,
    error_from_payload,
)
from quanttrade_client.messages import Message

logger = logging.getLogger("quanttrade_client")


async def open_websocket(url: str, token: str, open_timeout: float) -> ClientConnection:
    """The WebSocket handshake, with the gateway's refusals as the client's errors."""
    try:
        return await ws_connect(
            with_token(url, token),
            open_timeout=open_timeout,
            # API Gateway does not count WebSocket pings as activity; the ping action does that job.
            ping_interval=None,
            close_timeout=5,
        )
    except InvalidStatus as error:
        status = error.response.status_code
        if status in (401, 403):
            raise AuthFailed(f"connection refused with HTTP {status}") from None
        if status == 429:
            raise RateLimited("too many new connections (HTTP 429)") from None
        raise


def with_token(url: str, token: str) -> str:
    """The URL with `?token=` set: API Gateway's authorizer reads the token from the query string,
    since browsers cannot set headers on a WebSocket handshake."""
    parts = urlsplit(url)
    query = [(name, value) for name, value in parse_qsl(parts.query, keep_blank_values=True) if name != "token"]
    query.append(("token", token))
    return urlunsplit(parts._replace(query=urlencode(query)))


class Connection:
    """One WebSocket connection and the requests waiting for replies on it."""

    def __init__(self, ws: ClientConnection, number: int) -> None:
        self.ws = ws
        self.number = number
        self.opened_at = time.monotonic()
        self.replace_at = float("inf")
        self.replace_attempts = 0
        self.pending: dict[str, asyncio.Future[Message]] = {}
        self.sent_at: dict[str, float] = {}
        # Data messages are held back while the connection resumes: live ones can
        # overtake the replay, and both must be ordered against each other first.
        self.buffering = False
        self.buffer: list[Message] = []
        self.rate_limited_at: float | None = None
        self.closed = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    async def request(self, frame: dict[str, Any], timeout: float) -> Message:
        """Send a frame with a fresh request_id and await the reply that carries it."""
        request_id = uuid.uuid4().hex
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self.pending[request_id] = future
        sent_at = self.sent_at[request_id] = time.monotonic()
        try:
            if self.closed.is_set():
                raise ConnectionLost(f"{self} is closed", request_id=request_id)
            try:
                await self.ws.send(json.dumps({**frame, "request_id": request_id}))
            except ConnectionClosed:
                raise ConnectionLost(f"{self} closed while sending", request_id=request_id) from None
            try:
                return await asyncio.wait_for(future, timeout)
            except TimeoutError:
                # The server's RATE_LIMIT reply names no request: a request that got no
                # answer after a rate limit warning was most likely the one dropped.
                if self.rate_limited_at is not None and self.rate_limited_at >= sent_at:
                    raise RateLimited("request dropped by the server's rate limit", request_id=request_id) from None
                raise RequestTimeout(
                    f"no reply to {frame['action']} within {timeout:g}s", request_id=request_id
                ) from None
        finally:
            self.pending.pop(request_id, None)
            self.sent_at.pop(request_id, None)

    def settle(self, message: Message) -> bool:
        """Hand a reply to the request waiting for it; True when the message was a reply (waited for or not).

        Also notes a RATE_LIMIT warning, which names no request (see `request` and `lose_pending`).
        """
        if message.request_id is not None:
            future = self.pending.get(message.request_id)
            if future is not None and not future.done():
                if message.is_error:
                    future.set_exception(error_from_payload(message.payload, message.request_id))
                else:
                    future.set_result(message)
            # A reply nobody waits for any more (timed out, or sent on a retired connection) is dropped.
            return True
        if message.is_error and message.payload.get("error_code") == ErrorCode.RATE_LIMIT:
            self.rate_limited_at = time.monotonic()
        return False

    async def keepalive(self, interval: float, timeout: float) -> None:
        """A `ping` action every `interval` seconds; a connection that does not answer one is dropped."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.closed.wait(), interval)
            if self.closed.is_set():
                return
            try:
                await self.request({"action": "ping"}, timeout)
            except (RequestTimeout, ConnectionLost):
                if not self.closed.is_set():
                    logger.warning("no pong; dropping the connection", extra={"connection": self.number})
                    self.abort()
                return
            except QuantTradeError:
                continue  # any answer, even a refusal, shows the connection is alive

    def fail_pending(self, error: QuantTradeError) -> None:
        for future in self.pending.values():
            if not future.done():
                future.set_exception(error)

    def lose_pending(self, reason: str) -> None:
        """Fail the requests still waiting when the connection went away.

        The server closes a connection after repeated RATE_LIMIT warnings, and those
        warnings name no request: a request sent before the last warning most likely
        went unanswered because of the limit, which is worth more to the caller than
        "connection lost".
        """
        for request_id, future in self.pending.items():
            if future.done():
                continue
            sent_at = self.sent_at.get(request_id, float("inf"))
            if self.rate_limited_at is not None and self.rate_limited_at >= sent_at:
                future.set_exception(
                    RateLimited(f"unanswered when the rate-limited connection closed ({reason})", request_id=request_id)
                )
            else:
                future.set_exception(ConnectionLost(f"{self} closed ({reason})", request_id=request_id))

    def abort(self) -> None:
        """Drop the connection without a closing handshake: the peer is not answering anyway."""
        self.ws.transport.abort()

    def close_info(self) -> dict[str, Any]:
        return {"close_code": self.ws.close_code, "close_reason": self.ws.close_reason}

    def __repr__(self) -> str:
        return f"<connection #{self.number}>"
