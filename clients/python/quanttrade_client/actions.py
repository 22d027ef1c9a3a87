"""The API's actions as client methods: each sends one request and resolves with its reply.

A failed request raises the error the server answered with (errors.py). What the
application subscribed to and joined is remembered in the session, so a lost
session can be rebuilt on a reconnect.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

from quanttrade_client.errors import NotInRoom
from quanttrade_client.messages import Message, StreamType
from quanttrade_client.session import Session, stream_key


class Actions(ABC):
    """Mixed into QuantTradeClient, which provides the session and the live connection (`_request`)."""

    _session: Session
    _token: str | None

    @abstractmethod
    async def _request(self, frame: dict[str, Any]) -> Message:
        """Send a request on the live connection and await its reply."""

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
        self._session.streams[stream_key(spec["stream_type"], spec.get("symbol"))] = spec
        for stream, seq in (reply.payload.get("last_seq") or {}).items():
            self._session.order.start_at(stream, int(seq))
        return reply

    async def unsubscribe(self, stream_type: StreamType | str, symbol: str | None = None) -> Message:
        spec = _spec(stream_type, symbol, None, None)
        reply = await self._request({"action": "unsubscribe", "streams": [spec]})
        self._session.streams.pop(stream_key(spec["stream_type"], spec.get("symbol")), None)
        return reply

    async def join_room(self, room: str) -> Message:
        reply = await self._request({"action": "joinRoom", "room": room})
        self._session.rooms[room] = None
        return reply

    async def leave_room(self, room: str) -> Message:
        try:
            reply = await self._request({"action": "leaveRoom", "room": room})
        except NotInRoom:
            self._session.rooms.pop(room, None)
            raise
        self._session.rooms.pop(room, None)
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
