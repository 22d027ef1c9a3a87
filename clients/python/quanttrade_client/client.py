"""The QuantTrade WebSocket client: requests, a message stream, and a connection that stays up.

API Gateway shapes most of what happens here:

- it closes a connection after 10 idle minutes, and WebSocket-level pings do
  not count as activity, so the client sends the `ping` action instead;
- it closes every connection after 2 hours, so the client opens a new one a
  little earlier, resumes the session on it, and only then closes the old one;
- it can drop a connection at any time (deploys, scaling, network), so every
  drop is followed by a reconnect with exponential backoff and full jitter,
  and every reconnect by a `resume` that replays what was missed.

The application sees each data message once and in order per stream, whatever
path it took (see ordering.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from quanttrade_client.errors import (
    AuthFailed,
    ClientClosed,
    ConnectionLost,
    ErrorCode,
    NotInRoom,
    QuantTradeError,
    RateLimited,
    RequestTimeout,
    error_from_payload,
)
from quanttrade_client.messages import MalformedMessage, Message, StreamType, parse_frame
from quanttrade_client.ordering import StreamOrder
from quanttrade_protocol.frames import MAX_RESUME_STREAMS, MAX_STREAMS_PER_FRAME, StreamId

logger = logging.getLogger("quanttrade_client")

TokenProvider = Callable[[], Awaitable[str]]

API_GATEWAY_MAX_CONNECTION_SECONDS = 2 * 3600.0
# Data rooms carry the events of one stream family (quanttrade_ws.rooms.DATA_ROOM_PREFIXES).
_DATA_ROOM_STREAMS = {"market_data_": "market_data:", "predictions_": "predictions:"}
# A token provider that keeps failing is a configuration problem, not an outage.
_MAX_AUTH_FAILURES = 3


@dataclass(frozen=True)
class ResumeReport:
    """How a reconnect went.

    `session_resumed` is False when the server no longer knew the session and the
    client re-made the subscriptions and rooms on a new one. `recovered` is False
    when some stream's gap could not be replayed in full (history is kept for a
    limited time); `streams` has the server's per-stream detail.
    """

    session_resumed: bool
    recovered: bool
    streams: Mapping[str, Mapping[str, Any]]
    # Subscription keys and rooms the session had that the server did not restore
    # (the current token does not permit them, or a limit was reached).
    dropped: tuple[str, ...] = ()


def backoff_delay(attempt: int, base: float, cap: float, rng: Callable[[], float] = random.random) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**attempt)).

    Full jitter spreads a crowd of clients that lost the same gateway node, so
    they do not all come back in the same instant.
    """
    return rng() * min(cap, base * (2**attempt))


def stream_key(stream_type: StreamType | str, symbol: str | None) -> str:
    """The server's subscription key for a stream type and symbol (None: every symbol)."""
    return str(StreamId.subscription(StreamType(stream_type), symbol))


class _Connection:
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

    def __repr__(self) -> str:
        return f"<connection #{self.number}>"


class QuantTradeClient:
    """An asyncio client for the QuantTrade WebSocket API.

    >>> async with QuantTradeClient(url, token=token) as client:
    ...     await client.subscribe("market_data", symbol="AAPL")
    ...     async for message in client:
    ...         print(message.stream, message.seq, message.payload)

    Give `token` for a fixed access token, or `token_provider` (an async callable
    returning a fresh token) to have one fetched for every connection.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        token_provider: TokenProvider | None = None,
        request_timeout: float = 10.0,
        open_timeout: float = 10.0,
        keepalive_interval: float = 240.0,
        max_connection_seconds: float = API_GATEWAY_MAX_CONNECTION_SECONDS,
        reconnect_at: float = 0.95,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        max_reconnect_attempts: int | None = None,
        catch_up_after: float | None = 1.0,
        on_reconnect: Callable[[ResumeReport], object] | None = None,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if (token is None) == (token_provider is None):
            raise ValueError("give exactly one of token and token_provider")
        if not 0 < reconnect_at <= 1:
            raise ValueError("reconnect_at is a fraction of max_connection_seconds in (0, 1]")
        self.url = url
        self._token = token
        self._token_provider = token_provider
        self.request_timeout = request_timeout
        self.open_timeout = open_timeout
        self.keepalive_interval = keepalive_interval
        self.max_connection_seconds = max_connection_seconds
        self.reconnect_at = reconnect_at
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.max_reconnect_attempts = max_reconnect_attempts
        self.catch_up_after = catch_up_after
        self.on_reconnect = on_reconnect
        self._rng = rng

        self.session_token: str | None = None
        self.client_id: str | None = None
        self.limits: dict[str, Any] = {}
        self.last_resume: ResumeReport | None = None
        self.reconnects = 0

        # What the application asked for, so a lost session can be rebuilt.
        self._streams: dict[str, dict[str, Any]] = {}
        self._rooms: dict[str, None] = {}
        self._order = StreamOrder()
        self._inbox: asyncio.Queue[Message | None] = asyncio.Queue()
        self._connections: set[_Connection] = set()
        self._active: _Connection | None = None
        self._ready = asyncio.Event()
        self._numbers = itertools.count(1)
        self._supervisor: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._closing = False
        self._fatal: QuantTradeError | None = None

    # ------------------------------------------------------------ lifecycle

    async def connect(self) -> None:
        """Open the first connection and start a session. Raises at once if that fails (AuthFailed, OSError, ...);
        later drops are reconnected in the background."""
        if self._supervisor is not None:
            return
        if self._closing:
            raise ClientClosed("client is closed")
        connection = await self._open()
        self._activate(connection)
        self._supervisor = asyncio.create_task(self._supervise(connection), name="quanttrade-supervisor")

    async def close(self) -> None:
        """Close every connection; `async for` ends and pending requests raise ClientClosed."""
        if self._closing:
            return
        self._closing = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        for task in list(self._background):
            task.cancel()
        for connection in list(self._connections):
            connection.fail_pending(ClientClosed("client is closed"))
            await connection.ws.close(1000, "client closed")
            for task in connection.tasks:
                task.cancel()
        self._active = None
        self._ready.set()
        self._inbox.put_nowait(None)

    async def __aenter__(self) -> QuantTradeClient:
        await self.connect()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def __aiter__(self) -> QuantTradeClient:
        return self

    async def __anext__(self) -> Message:
        """The next message for the application: data messages (each once, in order per stream), room
        messages and notices, and errors the server did not tie to a request. Raises the fatal error
        (e.g. AuthFailed when a reconnect was refused) when the client had to give up."""
        message = await self._inbox.get()
        if message is None:
            self._inbox.put_nowait(None)  # every later iteration ends too
            if self._fatal is not None:
                raise self._fatal
            raise StopAsyncIteration
        return message

    @property
    def connected(self) -> bool:
        return self._active is not None and not self._active.closed.is_set()

    @property
    def last_seq(self) -> dict[str, int]:
        """The last delivered seq of every stream seen so far."""
        return self._order.last_seq

    # ------------------------------------------------------------ requests

    async def subscribe(
        self,
        stream_type: StreamType | str,
        symbol: str | None = None,
        interval: float | None = None,
        filters: Mapping[str, str] | None = None,
        latest_only: bool = False,
    ) -> Message:
        """Subscribe to a stream type, optionally one symbol, at most one update per `interval` seconds,
        narrowed by server-side `filters` (e.g. {"min_volume": "1000"}). `latest_only`: of a stream's
        messages waiting for the same frame only the newest is sent (a price board, not a chart)."""
        spec = _spec(stream_type, symbol, interval, filters)
        if latest_only:
            spec["latest_only"] = True
        reply = await self._request({"action": "subscribe", "streams": [spec]})
        self._streams[stream_key(spec["stream_type"], spec.get("symbol"))] = spec
        for stream, seq in (reply.payload.get("last_seq") or {}).items():
            self._order.start_at(stream, int(seq))
        return reply

    async def unsubscribe(self, stream_type: StreamType | str, symbol: str | None = None) -> Message:
        spec = _spec(stream_type, symbol, None, None)
        reply = await self._request({"action": "unsubscribe", "streams": [spec]})
        self._streams.pop(stream_key(spec["stream_type"], spec.get("symbol")), None)
        return reply

    async def join_room(self, room: str) -> Message:
        reply = await self._request({"action": "joinRoom", "room": room})
        self._rooms[room] = None
        return reply

    async def leave_room(self, room: str) -> Message:
        try:
            reply = await self._request({"action": "leaveRoom", "room": room})
        except NotInRoom:
            self._rooms.pop(room, None)
            raise
        self._rooms.pop(room, None)
        return reply

    async def send_room_message(self, room: str, message: str) -> Message:
        """Send to every member of a room; resolves with the server's copy of the message as the members got it."""
        return await self._request({"action": "sendRoomMessage", "room": room, "message": message})

    async def ping(self) -> Message:
        return await self._request({"action": "ping"})

    async def refresh(self, token: str) -> Message:
        """Replace the access token of the live connection (API Gateway checked the old one only at connect).
        Later reconnects use it too, unless a token provider supplies tokens."""
        reply = await self._request({"action": "refresh", "token": token})
        self._token = token
        return reply

    async def request(self, action: str, **fields: Any) -> Message:
        """Send any action with these fields and await its answer: for actions newer than this client."""
        return await self._request({"action": action, **fields})

    async def _request(self, frame: dict[str, Any]) -> Message:
        connection = await self._wait_active()
        return await self._request_on(connection, frame)

    async def _wait_active(self) -> _Connection:
        deadline = time.monotonic() + self.request_timeout
        while True:
            if self._fatal is not None:
                raise self._fatal
            if self._closing:
                raise ClientClosed("client is closed")
            if self._supervisor is None:
                raise ClientClosed("client is not connected; use `async with` or await connect()")
            active = self._active
            if active is not None and not active.closed.is_set():
                return active
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ConnectionLost(f"not reconnected within {self.request_timeout:g}s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), remaining)

    async def _request_on(self, connection: _Connection, frame: dict[str, Any]) -> Message:
        request_id = uuid.uuid4().hex
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        connection.pending[request_id] = future
        sent_at = connection.sent_at[request_id] = time.monotonic()
        try:
            if connection.closed.is_set():
                raise ConnectionLost(f"{connection} is closed", request_id=request_id)
            try:
                await connection.ws.send(json.dumps({**frame, "request_id": request_id}))
            except ConnectionClosed:
                raise ConnectionLost(f"{connection} closed while sending", request_id=request_id) from None
            try:
                return await asyncio.wait_for(future, self.request_timeout)
            except TimeoutError:
                # The server's RATE_LIMIT reply names no request: a request that got no
                # answer after a rate limit warning was most likely the one dropped.
                if connection.rate_limited_at is not None and connection.rate_limited_at >= sent_at:
                    raise RateLimited("request dropped by the server's rate limit", request_id=request_id) from None
                raise RequestTimeout(
                    f"no reply to {frame['action']} within {self.request_timeout:g}s", request_id=request_id
                ) from None
        finally:
            connection.pending.pop(request_id, None)
            connection.sent_at.pop(request_id, None)

    # ------------------------------------------------------------ connections

    async def _open(self) -> _Connection:
        """A new connection with its session established (hello, or resume with replay)."""
        token = await self._next_token()
        try:
            ws = await ws_connect(
                _with_token(self.url, token),
                open_timeout=self.open_timeout,
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
        connection = _Connection(ws, next(self._numbers))
        self._connections.add(connection)
        connection.tasks.append(asyncio.create_task(self._read(connection), name=f"quanttrade-read-{connection}"))
        try:
            await self._establish(connection)
        except BaseException:
            connection.fail_pending(ConnectionLost("session setup failed"))
            await ws.close(1000, "session setup failed")
            raise
        connection.replace_at = connection.opened_at + self.max_connection_seconds * self.reconnect_at
        connection.tasks.append(
            asyncio.create_task(self._keepalive(connection), name=f"quanttrade-keepalive-{connection}")
        )
        logger.info("connected", extra={"connection": connection.number, "client_id": self.client_id})
        return connection

    async def _next_token(self) -> str:
        if self._token_provider is not None:
            self._token = await self._token_provider()
        assert self._token is not None
        return self._token

    async def _establish(self, connection: _Connection) -> None:
        if self.session_token is None:
            await self._hello(connection)
            return
        connection.buffering = True
        try:
            reply: Message | None
            try:
                resumed = await self._resume(connection)
            except AuthFailed as error:
                # The server no longer knows the session (expired, or its store was reset):
                # start a new one, re-make what the application asked for, then fetch the gap.
                logger.info("session not resumed; starting a new one", extra={"reason": error.message})
                session_resumed = False
                await self._hello(connection)
                await self._restore(connection, set(), set())
                reply = await self._resume(connection) if self._resume_points() else None
            else:
                session_resumed, reply = True, resumed
                await self._restore(
                    connection,
                    set(resumed.payload.get("subscriptions") or ()),
                    set(resumed.payload.get("rooms") or ()),
                )
        except BaseException:
            # Held-back messages of a failed resume are not released: admitting a live
            # message ahead of an unfinished replay would turn the gap into a loss. The
            # next connection's resume replays them.
            connection.buffer.clear()
            raise
        streams = self._apply_resumed(reply)
        connection.buffering = False
        # No await from here to the return: nothing else from this connection can
        # reach the application before the held-back messages.
        for message in self._order.release(connection.buffer):
            self._inbox.put_nowait(message)
        connection.buffer.clear()
        self.last_resume = ResumeReport(
            session_resumed=session_resumed,
            recovered=all(bool(result.get("recovered", True)) for result in streams.values()),
            streams=streams,
            dropped=tuple(str(item) for item in reply.payload.get("dropped") or ()) if reply is not None else (),
        )
        if not self.last_resume.recovered:
            logger.warning("reconnected with a possible gap", extra={"streams": streams})

    async def _hello(self, connection: _Connection) -> None:
        reply = await self._request_on(connection, {"action": "hello"})
        self.session_token = str(reply.payload["session_token"])
        self.client_id = reply.payload.get("client_id")
        self.limits = dict(reply.payload.get("limits") or {})

    async def _resume(self, connection: _Connection) -> Message:
        assert self.session_token is not None
        reply = await self._request_on(
            connection, {"action": "resume", "session_token": self.session_token, "last_seq": self._resume_points()}
        )
        # Session tokens are single-use: the one just sent is spent. Keep the next one at once, before
        # anything else on this connection (re-subscribing, say) can fail and leave only the spent one.
        if isinstance(reply.payload.get("session_token"), str):
            self.session_token = reply.payload["session_token"]
        return reply

    def _resume_points(self) -> dict[str, int]:
        """Where each wanted stream left off. Streams the application no longer wants are not replayed."""
        wanted = [(stream, seq) for stream, seq in self._order.last_seq.items() if self._wants(stream)]
        return dict(wanted[-MAX_RESUME_STREAMS:])

    def _wants(self, stream: str) -> bool:
        stream_id = StreamId.parse(stream)
        if stream_id is None:
            return False  # a stream type this client does not know: it never subscribed to one
        stream_type, symbol = stream_id.stream_type, stream_id.symbol
        if stream_key(stream_type, None) in self._streams:
            return True
        if symbol and stream_key(stream_type, symbol) in self._streams:
            return True
        for room in self._rooms:
            if room == "alerts" and stream_type == StreamType.ALERTS:
                return True
            for prefix, stream_prefix in _DATA_ROOM_STREAMS.items():
                if room.startswith(prefix) and stream.upper() == (stream_prefix + room[len(prefix) :]).upper():
                    return True
        return False

    async def _restore(self, connection: _Connection, streams: set[str], rooms: set[str]) -> None:
        """Subscribe and join whatever the application asked for that the server's session lacks."""
        missing = [spec for key, spec in self._streams.items() if key not in streams]
        for start in range(0, len(missing), MAX_STREAMS_PER_FRAME):
            chunk = missing[start : start + MAX_STREAMS_PER_FRAME]
            await self._tolerate(self._request_on(connection, {"action": "subscribe", "streams": chunk}))
        for room in [room for room in self._rooms if room not in rooms]:
            await self._tolerate(self._request_on(connection, {"action": "joinRoom", "room": room}))

    async def _tolerate(self, request: Awaitable[Message]) -> None:
        """A refusal (a permission withdrawn, a room now full) must not stop the reconnect; a dead connection must."""
        try:
            await request
        except (ConnectionLost, RequestTimeout, ClientClosed):
            raise
        except QuantTradeError as error:
            logger.warning("could not restore after reconnect", extra={"code": error.code, "reason": error.message})

    def _apply_resumed(self, reply: Message | None) -> dict[str, dict[str, Any]]:
        if reply is None:
            return {}
        payload = reply.payload
        if isinstance(payload.get("session_token"), str):
            self.session_token = payload["session_token"]
        if isinstance(payload.get("client_id"), str):
            self.client_id = payload["client_id"]
        streams = {str(k): v for k, v in (payload.get("streams") or {}).items() if isinstance(v, dict)}
        for stream, result in streams.items():
            head, mine = result.get("last_seq"), self._order.last_seq.get(stream)
            if isinstance(head, int) and mine is not None and head < mine:
                # The server's counter is behind what we saw: the stream was reset, and
                # keeping the old mark would drop every new message as a duplicate.
                self._order.forget(stream)
        return streams

    def _activate(self, connection: _Connection) -> None:
        self._active = connection
        self._ready.set()

    async def _supervise(self, connection: _Connection) -> None:
        """Keep one live connection: replace it before the gateway's cut-off, reconnect when it drops."""
        current: _Connection | None = connection
        attempt = 0
        auth_failures = 0
        try:
            while not self._closing:
                if current is None:
                    if self.max_reconnect_attempts is not None and attempt >= self.max_reconnect_attempts:
                        raise ConnectionLost(f"gave up after {attempt} reconnect attempts")
                    await asyncio.sleep(backoff_delay(attempt, self.backoff_base, self.backoff_max, self._rng))
                    attempt += 1
                    try:
                        current = await self._open()
                    except AuthFailed:
                        auth_failures += 1
                        if self._token_provider is None or auth_failures >= _MAX_AUTH_FAILURES:
                            raise
                        continue
                    except (OSError, TimeoutError, InvalidHandshake, QuantTradeError) as error:
                        logger.warning("reconnect failed", extra={"attempt": attempt, "reason": repr(error)})
                        continue
                    attempt = auth_failures = 0
                    self.reconnects += 1
                    self._activate(current)
                    self._schedule_catch_up(current)
                    self._announce()
                    continue

                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(current.closed.wait(), max(0.0, current.replace_at - time.monotonic()))
                if current.closed.is_set():
                    logger.info("connection lost", extra={"connection": current.number, **_close_info(current)})
                    current = None
                    continue
                current = await self._replace(current)
        except asyncio.CancelledError:
            raise
        except QuantTradeError as fatal:
            logger.error("giving up", extra={"reason": repr(fatal)})
            self._fatal = fatal
            self._ready.set()
            self._inbox.put_nowait(None)
            for remaining in list(self._connections):
                await remaining.ws.close(1000, "client gave up")

    async def _replace(self, old: _Connection) -> _Connection:
        """Open the successor of a connection near the gateway's maximum duration, while the old one still
        delivers; the old one is closed only once the new one has resumed, so nothing falls between them."""
        try:
            fresh = await self._open()
        except (OSError, TimeoutError, InvalidHandshake, QuantTradeError) as error:
            old.replace_attempts += 1
            old.replace_at = time.monotonic() + backoff_delay(
                old.replace_attempts, self.backoff_base, self.backoff_max, self._rng
            )
            logger.warning("proactive reconnect failed; keeping the old connection", extra={"reason": repr(error)})
            return old
        self.reconnects += 1
        self._activate(fresh)
        self._spawn(self._retire(old))
        self._schedule_catch_up(fresh)
        self._announce()
        return fresh

    def _schedule_catch_up(self, connection: _Connection) -> None:
        # A resumed session gets this second pass from the server itself (it replays once more after
        # the audience cache has turned over); a session re-made after `hello` does not.
        if self.catch_up_after is not None and self.last_resume is not None and not self.last_resume.session_resumed:
            self._spawn(self._catch_up(connection, self.catch_up_after))

    async def _catch_up(self, connection: _Connection, delay: float) -> None:
        """A second `resume` on a connection shortly after it re-made a lost session, to replay what fell between.

        Fan-out caches each stream's audience for a moment (subscriber_cache_seconds),
        so a message sequenced just after the replay can still be addressed to the
        audience as it was before the new subscriptions and never reach this
        connection. Asking again once that moment has passed replays exactly those
        messages; everything else in the answer is a duplicate and is dropped.
        """
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(connection.closed.wait(), delay)
        if connection.closed.is_set() or self._active is not connection or not self._resume_points():
            return
        connection.buffering = True
        reply: Message | None = None
        try:
            reply = await self._resume(connection)
        except QuantTradeError as error:
            logger.warning("catch-up resume failed", extra={"code": error.code, "reason": error.message})
        if connection.closed.is_set():
            # Not released: the next connection's resume replays from before these.
            connection.buffer.clear()
            connection.buffering = False
            return
        streams = self._apply_resumed(reply)
        connection.buffering = False
        for message in self._order.release(connection.buffer):
            self._inbox.put_nowait(message)
        connection.buffer.clear()
        if not all(bool(result.get("recovered", True)) for result in streams.values()):
            logger.warning("catch-up found a gap it could not replay", extra={"streams": streams})

    async def _retire(self, old: _Connection) -> None:
        waiting = [future for future in old.pending.values() if not future.done()]
        if waiting:
            await asyncio.wait(waiting, timeout=self.request_timeout)
        await old.ws.close(1000, "replaced by a new connection")

    def _announce(self) -> None:
        if self.on_reconnect is not None and self.last_resume is not None:
            try:
                self.on_reconnect(self.last_resume)
            except Exception:
                logger.exception("on_reconnect callback failed")

    def _spawn(self, coroutine: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ------------------------------------------------------------ per connection

    async def _read(self, connection: _Connection) -> None:
        try:
            async for data in connection.ws:
                try:
                    messages = parse_frame(data)
                except MalformedMessage as error:
                    logger.warning("ignored a frame that is not a server message", extra={"reason": str(error)})
                    continue
                for message in messages:
                    self._dispatch(connection, message)
        except ConnectionClosed:
            pass
        except Exception:
            logger.exception("reader failed", extra={"connection": connection.number})
            connection.abort()
        finally:
            connection.closed.set()
            self._connections.discard(connection)
            info = _close_info(connection)
            connection.lose_pending(f"close code {info['close_code']} {info['close_reason'] or ''}".strip())
            if self._active is connection:
                self._active = None
                self._ready.clear()
            for task in connection.tasks:
                if task is not asyncio.current_task():
                    task.cancel()

    def _dispatch(self, connection: _Connection, message: Message) -> None:
        if message.request_id is not None:
            future = connection.pending.get(message.request_id)
            if future is not None and not future.done():
                if message.is_error:
                    future.set_exception(error_from_payload(message.payload, message.request_id))
                else:
                    future.set_result(message)
            # A reply nobody waits for any more (timed out, or sent on a retired connection) is dropped.
            return
        if message.is_error and message.payload.get("error_code") == ErrorCode.RATE_LIMIT:
            connection.rate_limited_at = time.monotonic()
        if message.is_data:
            if connection.buffering:
                connection.buffer.append(message)
            elif self._order.admit(message):
                self._inbox.put_nowait(message)
            return
        self._inbox.put_nowait(message)

    async def _keepalive(self, connection: _Connection) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(connection.closed.wait(), self.keepalive_interval)
            if connection.closed.is_set():
                return
            try:
                await self._request_on(connection, {"action": "ping"})
            except (RequestTimeout, ConnectionLost):
                if not connection.closed.is_set():
                    logger.warning("no pong; dropping the connection", extra={"connection": connection.number})
                    connection.abort()
                return
            except QuantTradeError:
                continue  # any answer, even a refusal, shows the connection is alive


def _spec(
    stream_type: StreamType | str, symbol: str | None, interval: float | None, filters: Mapping[str, str] | None
) -> dict[str, Any]:
    spec: dict[str, Any] = {"stream_type": StreamType(stream_type).value}
    if symbol is not None:
        spec["symbol"] = symbol
    if interval is not None:
        spec["interval"] = interval
    if filters:
        spec["filters"] = {str(name): str(value) for name, value in filters.items()}
    return spec


def _with_token(url: str, token: str) -> str:
    """The URL with `?token=` set: API Gateway's authorizer reads the token from the query string,
    since browsers cannot set headers on a WebSocket handshake."""
    parts = urlsplit(url)
    query = [(name, value) for name, value in parse_qsl(parts.query, keep_blank_values=True) if name != "token"]
    query.append(("token", token))
    return urlunsplit(parts._replace(query=urlencode(query)))


def _close_info(connection: _Connection) -> dict[str, Any]:
    return {"close_code": connection.ws.close_code, "close_reason": connection.ws.close_reason}
