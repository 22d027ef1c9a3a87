"""Records the data layer stores and the domain works with."""

from __future__ import annotations

from dataclasses import dataclass, field

from quanttrade_ws.auth import Identity
from quanttrade_ws.protocol import StreamId


@dataclass(frozen=True)
class Connection:
    connection_id: str
    identity: Identity
    connected_at: int  # epoch milliseconds
    last_activity: int  # epoch seconds
    session_id: str | None = None
    room_count: int = 0
    subscription_count: int = 0
    # per-connection rate window: frames counted in the current second
    rate_window: int = 0
    rate_count: int = 0


@dataclass(frozen=True)
class Subscription:
    stream_key: str  # `market_data:AAPL` or `market_data:*`
    connection_id: str
    user_id: str = ""
    interval: float | None = None
    filters: dict[str, str] = field(default_factory=dict)
    # The subscriber's access-token expiry (epoch seconds, 0: none), copied from the connection
    # so the fan-out can skip an expired subscriber without reading its connection row.
    token_expires_at: int = 0
    latest_only: bool = False  # conflated: only the newest message of each stream in a post (StreamSpec.latest_only)

    def live_at(self, now: float) -> bool:
        return not self.token_expires_at or self.token_expires_at >= now

    def to_spec(self) -> dict[str, object]:
        stream = StreamId.parse(self.stream_key)
        if stream is None:  # not a key this server writes; shown as it is stored
            return {"stream_type": self.stream_key, "symbol": None, "interval": self.interval, "filters": {}}
        return {
            "stream_type": stream.stream_type.value,
            "symbol": None if stream.symbol is None or stream.is_wildcard else stream.symbol,
            "interval": self.interval,
            "filters": dict(self.filters),
            "latest_only": self.latest_only,
        }


@dataclass(frozen=True)
class SessionSnapshot:
    """What a session owned when its connection went away, kept so a new connection can resume it."""

    session_id: str
    user_id: str
    subscriptions: tuple[Subscription, ...] = ()
    rooms: tuple[str, ...] = ()
    connection_id: str | None = None  # the live connection holding the session, if any


@dataclass(frozen=True)
class StreamHead:
    stream: str
    last_seq: int = 0
    last_message: str | None = None


@dataclass(frozen=True)
class HistoryEntry:
    seq: int
    message: str
