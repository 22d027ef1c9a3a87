"""The session a client keeps across connections, and how a new connection takes it up.

A session is the server's record of this client (its subscriptions and rooms),
named by a single-use session token. On every new connection the client either
starts one (`hello`) or resumes it (`resume`), which replays what each stream
sent while the client was away; if the server no longer knows the session, the
client starts a new one and re-makes what the application asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from quanttrade_client.connection import Connection
from quanttrade_client.errors import AuthFailed, ClientClosed, ConnectionLost, QuantTradeError, RequestTimeout
from quanttrade_client.messages import Message, StreamType
from quanttrade_client.ordering import StreamOrder
from quanttrade_protocol.frames import MAX_RESUME_STREAMS, MAX_STREAMS_PER_FRAME, StreamId

logger = logging.getLogger("quanttrade_client")

# Data rooms carry the events of one stream family (quanttrade_ws.rooms.DATA_ROOM_PREFIXES).
_DATA_ROOM_STREAMS = {"market_data_": "market_data:", "predictions_": "predictions:"}


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


def stream_key(stream_type: StreamType | str, symbol: str | None) -> str:
    """The server's subscription key for a stream type and symbol (None: every symbol)."""
    return str(StreamId.subscription(StreamType(stream_type), symbol))


class Session:
    """The session's token and limits, what the application asked for, and where each stream left off.

    Data messages reach `inbox` each once and in order per stream (`order`).
    """

    def __init__(self, inbox: asyncio.Queue[Message | None], request_timeout: float) -> None:
        self.inbox = inbox
        self.request_timeout = request_timeout
        self.token: str | None = None
        self.client_id: str | None = None
        self.limits: dict[str, Any] = {}
        self.last_resume: ResumeReport | None = None
        # What the application asked for, so a lost session can be rebuilt.
        self.streams: dict[str, dict[str, Any]] = {}
        self.rooms: dict[str, None] = {}
        self.order = StreamOrder()

    async def establish(self, connection: Connection) -> None:
        """Take the session up on a new connection: `hello` the first time, `resume` with replay after."""
        if self.token is None:
            await self._hello(connection)
            return
        connection.buffering = True
        try:
            reply: Message | None
            sent: dict[str, int] = {}
            try:
                resumed, sent = await self._resume(connection)
            except AuthFailed as error:
                # The server no longer knows the session (expired, or its store was reset):
                # start a new one, re-make what the application asked for, then fetch the gap.
                logger.info("session not resumed; starting a new one", extra={"reason": error.message})
                session_resumed = False
                await self._hello(connection)
                await self._restore(connection, set(), set())
                reply = None
                if self.resume_points():
                    reply, sent = await self._resume(connection)
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
        streams = self._apply_resumed(reply, sent)
        self._release(connection)
        self.last_resume = ResumeReport(
            session_resumed=session_resumed,
            recovered=all(bool(result.get("recovered", True)) for result in streams.values()),
            streams=streams,
            dropped=tuple(str(item) for item in reply.payload.get("dropped") or ()) if reply is not None else (),
        )
        if not self.last_resume.recovered:
            logger.warning("reconnected with a possible gap", extra={"streams": streams})

    async def catch_up(self, connection: Connection, delay: float, is_current: Callable[[], bool]) -> None:
        """A second `resume` on a connection shortly after it re-made a lost session, to replay what fell between.

        Fan-out caches each stream's audience for a moment (subscriber_cache_seconds),
        so a message sequenced just after the replay can still be addressed to the
        audience as it was before the new subscriptions and never reach this
        connection. Asking again once that moment has passed replays exactly those
        messages; everything else in the answer is a duplicate and is dropped.
        """
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(connection.closed.wait(), delay)
        if connection.closed.is_set() or not is_current() or not self.resume_points():
            return
        connection.buffering = True
        reply: Message | None = None
        sent: dict[str, int] = {}
        try:
            reply, sent = await self._resume(connection)
        except QuantTradeError as error:
            logger.warning("catch-up resume failed", extra={"code": error.code, "reason": error.message})
        if connection.closed.is_set():
            # Not released: the next connection's resume replays from before these.
            connection.buffer.clear()
            connection.buffering = False
            return
        streams = self._apply_resumed(reply, sent)
        self._release(connection)
        if not all(bool(result.get("recovered", True)) for result in streams.values()):
            logger.warning("catch-up found a gap it could not replay", extra={"streams": streams})

    def resume_points(self) -> dict[str, int]:
        """Where each wanted stream left off. Streams the application no longer wants are not replayed."""
        wanted = [(stream, seq) for stream, seq in self.order.last_seq.items() if self._wants(stream)]
        return dict(wanted[-MAX_RESUME_STREAMS:])

    async def _hello(self, connection: Connection) -> None:
        reply = await connection.request({"action": "hello"}, self.request_timeout)
        self.token = str(reply.payload["session_token"])
        self.client_id = reply.payload.get("client_id")
        self.limits = dict(reply.payload.get("limits") or {})

    async def _resume(self, connection: Connection) -> tuple[Message, dict[str, int]]:
        """The `resume` reply, and the resume points it was asked with."""
        assert self.token is not None
        points = self.resume_points()
        reply = await connection.request(
            {"action": "resume", "session_token": self.token, "last_seq": points}, self.request_timeout
        )
        # Session tokens are single-use: the one just sent is spent. Keep the next one at once, before
        # anything else on this connection (re-subscribing, say) can fail and leave only the spent one.
        if isinstance(reply.payload.get("session_token"), str):
            self.token = reply.payload["session_token"]
        return reply, points

    def _wants(self, stream: str) -> bool:
        stream_id = StreamId.parse(stream)
        if stream_id is None:
            return False  # a stream type this client does not know: it never subscribed to one
        stream_type, symbol = stream_id.stream_type, stream_id.symbol
        if stream_key(stream_type, None) in self.streams:
            return True
        if symbol and stream_key(stream_type, symbol) in self.streams:
            return True
        for room in self.rooms:
            if room == "alerts" and stream_type == StreamType.ALERTS:
                return True
            for prefix, stream_prefix in _DATA_ROOM_STREAMS.items():
                if room.startswith(prefix) and stream.upper() == (stream_prefix + room[len(prefix) :]).upper():
                    return True
        return False

    async def _restore(self, connection: Connection, streams: set[str], rooms: set[str]) -> None:
        """Subscribe and join whatever the application asked for that the server's session lacks."""
        missing = [spec for key, spec in self.streams.items() if key not in streams]
        for start in range(0, len(missing), MAX_STREAMS_PER_FRAME):
            chunk = missing[start : start + MAX_STREAMS_PER_FRAME]
            await self._tolerate(connection.request({"action": "subscribe", "streams": chunk}, self.request_timeout))
        for room in [room for room in self.rooms if room not in rooms]:
            await self._tolerate(connection.request({"action": "joinRoom", "room": room}, self.request_timeout))

    async def _tolerate(self, request: Awaitable[Message]) -> None:
        """A refusal (a permission withdrawn, a room now full) must not stop the reconnect; a dead connection must."""
        try:
            await request
        except (ConnectionLost, RequestTimeout, ClientClosed):
            raise
        except QuantTradeError as error:
            logger.warning("could not restore after reconnect", extra={"code": error.code, "reason": error.message})

    def _apply_resumed(self, reply: Message | None, sent: Mapping[str, int]) -> dict[str, dict[str, Any]]:
        """The reply's per-stream results; a stream whose server-side sequence restarted is forgotten.

        A reset shows as a head below the point the resume was sent with: everything the client had seen
        then was sequenced before the server read its head. The client's latest seq is no test, as an
        older connection still open (a proactive replacement) may have delivered later messages since.
        """
        if reply is None:
            return {}
        payload = reply.payload
        if isinstance(payload.get("session_token"), str):
            self.token = payload["session_token"]
        if isinstance(payload.get("client_id"), str):
            self.client_id = payload["client_id"]
        streams = {str(k): v for k, v in (payload.get("streams") or {}).items() if isinstance(v, dict)}
        for stream, result in streams.items():
            head, asked_from = result.get("last_seq"), sent.get(stream)
            if isinstance(head, int) and asked_from is not None and head < asked_from:
                # The server's counter is behind what we saw: the stream was reset, and
                # keeping the old mark would drop every new message as a duplicate.
                self.order.forget(stream)
        return streams

    def _release(self, connection: Connection) -> None:
        # No await in here: nothing else from this connection can reach the application
        # before the messages held back behind the replay.
        connection.buffering = False
        for message in self.order.release(connection.buffer):
            self.inbox.put_nowait(message)
        connection.buffer.clear()
