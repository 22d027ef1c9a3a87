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
import logging
import random
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

from websockets.exceptions import ConnectionClosed, InvalidHandshake

from quanttrade_client.actions import Actions
from quanttrade_client.connection import Connection, open_websocket
from quanttrade_client.errors import AuthFailed, ClientClosed, ConnectionLost, QuantTradeError
from quanttrade_client.messages import MalformedMessage, Message, parse_frame
from quanttrade_client.session import ResumeReport, Session

logger = logging.getLogger("quanttrade_client")

TokenProvider = Callable[[], Awaitable[str]]

API_GATEWAY_MAX_CONNECTION_SECONDS = 2 * 3600.0
# A token provider that keeps failing is a configuration problem, not an outage.
_MAX_AUTH_FAILURES = 3


def backoff_delay(attempt: int, base: float, cap: float, rng: Callable[[], float] = random.random) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**attempt)).

    Full jitter spreads a crowd of clients that lost the same gateway node, so
    they do not all come back in the same instant.
    """
    return rng() * min(cap, base * (2**attempt))


class QuantTradeClient(Actions):
    """An asyncio client for the QuantTrade WebSocket API.

    >>> async with QuantTradeClient(url, token=token) as client:
    ...     await client.subscribe("market_data", symbol="AAPL")
    ...     async for message in client:
    ...         print(message.stream, message.seq, message.payload)

    Give `token` for a fixed access token, or `token_provider` (an async callable
    returning a fresh token) to have one fetched for every connection. The
    actions (subscribe, join_room, ...) are in `actions.Actions`.
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

        self.reconnects = 0

        self._inbox: asyncio.Queue[Message | None] = asyncio.Queue()
        self._session = Session(self._inbox, request_timeout)
        self._connections: set[Connection] = set()
        self._active: Connection | None = None
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
        return self._session.order.last_seq

    @property
    def session_token(self) -> str | None:
        """The session token the next resume will present (single-use: each resume answers with the next)."""
        return self._session.token

    @property
    def client_id(self) -> str | None:
        return self._session.client_id

    @property
    def limits(self) -> dict[str, Any]:
        """The limits the server announced for this connection (`hello`)."""
        return self._session.limits

    @property
    def last_resume(self) -> ResumeReport | None:
        """How the latest reconnect went."""
        return self._session.last_resume

    # ------------------------------------------------------------ requests

    async def _request(self, frame: dict[str, Any]) -> Message:
        connection = await self._wait_active()
        return await connection.request(frame, self.request_timeout)

    async def _wait_active(self) -> Connection:
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

    # ------------------------------------------------------------ connections

    async def _open(self) -> Connection:
        """A new connection with its session established (hello, or resume with replay)."""
        ws = await open_websocket(self.url, await self._next_token(), self.open_timeout)
        connection = Connection(ws, next(self._numbers))
        self._connections.add(connection)
        connection.tasks.append(asyncio.create_task(self._read(connection), name=f"quanttrade-read-{connection}"))
        try:
            await self._session.establish(connection)
        except BaseException:
            connection.fail_pending(ConnectionLost("session setup failed"))
            await ws.close(1000, "session setup failed")
            raise
        connection.replace_at = connection.opened_at + self.max_connection_seconds * self.reconnect_at
        connection.tasks.append(
            asyncio.create_task(
                connection.keepalive(self.keepalive_interval, self.request_timeout),
                name=f"quanttrade-keepalive-{connection}",
            )
        )
        logger.info("connected", extra={"connection": connection.number, "client_id": self.client_id})
        return connection

    async def _next_token(self) -> str:
        if self._token_provider is not None:
            self._token = await self._token_provider()
        assert self._token is not None
        return self._token

    def _activate(self, connection: Connection) -> None:
        self._active = connection
        self._ready.set()

    async def _supervise(self, connection: Connection) -> None:
        """Keep one live connection: replace it before the gateway's cut-off, reconnect when it drops."""
        current: Connection | None = connection
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
                    logger.info("connection lost", extra={"connection": current.number, **current.close_info()})
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

    async def _replace(self, old: Connection) -> Connection:
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

    def _schedule_catch_up(self, connection: Connection) -> None:
        # A resumed session gets this second pass from the server itself (it replays once more after
        # the audience cache has turned over); a session re-made after `hello` does not.
        last_resume = self._session.last_resume
        if self.catch_up_after is not None and last_resume is not None and not last_resume.session_resumed:
            self._spawn(
                self._session.catch_up(connection, self.catch_up_after, is_current=lambda: self._active is connection)
            )

    async def _retire(self, old: Connection) -> None:
        waiting = [future for future in old.pending.values() if not future.done()]
        if waiting:
            await asyncio.wait(waiting, timeout=self.request_timeout)
        await old.ws.close(1000, "replaced by a new connection")

    def _announce(self) -> None:
        if self.on_reconnect is not None and self._session.last_resume is not None:
            try:
                self.on_reconnect(self._session.last_resume)
            except Exception:
                logger.exception("on_reconnect callback failed")

    def _spawn(self, coroutine: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ------------------------------------------------------------ per connection

    async def _read(self, connection: Connection) -> None:
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
            info = connection.close_info()
            connection.lose_pending(f"close code {info['close_code']} {info['close_reason'] or ''}".strip())
            if self._active is connection:
                self._active = None
                self._ready.clear()
            for task in connection.tasks:
                if task is not asyncio.current_task():
                    task.cancel()

    def _dispatch(self, connection: Connection, message: Message) -> None:
        if connection.settle(message):
            return
        if message.is_data:
            if connection.buffering:
                connection.buffer.append(message)
            elif self._session.order.admit(message):
                self._inbox.put_nowait(message)
            return
        self._inbox.put_nowait(message)
