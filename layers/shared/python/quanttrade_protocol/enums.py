"""The protocol's names: what a client can subscribe to, what a server message is, and why a request failed.

Plain enums (no pydantic), so a client that only needs the names imports nothing else.
"""

from __future__ import annotations

from enum import StrEnum


class StreamType(StrEnum):
    """What a client can subscribe to."""

    MARKET_DATA = "market_data"
    PREDICTIONS = "predictions"
    ALERTS = "alerts"
    PERFORMANCE = "performance"
    SYSTEM_STATUS = "system_status"
    MARKET_REGIME = "market_regime"


class MessageType(StrEnum):
    """What a server message is; decides the shape of `payload`."""

    CONNECT = "connect"
    SUBSCRIBE = "subscribe"
    UNSUBSCRIBE = "unsubscribe"
    JOIN_ROOM = "join_room"
    LEAVE_ROOM = "leave_room"
    ROOM_MESSAGE = "room_message"
    PONG = "pong"
    REFRESH = "refresh"
    RESUMED = "resumed"
    MARKET_DATA = "market_data"
    PREDICTION = "prediction"
    ALERT = "alert"
    PERFORMANCE = "performance"
    SYSTEM_STATUS = "system_status"
    MARKET_REGIME = "market_regime"
    HEARTBEAT = "heartbeat"
    BATCH = "batch"
    ERROR = "error"


class ErrorCode(StrEnum):
    """Why a request failed (the `error_code` of an `error` message)."""

    AUTH_FAILED = "AUTH_FAILED"
    RATE_LIMIT = "RATE_LIMIT"
    SUBSCRIPTION_LIMIT = "SUBSCRIPTION_LIMIT"
    ROOM_LIMIT = "ROOM_LIMIT"
    ROOM_FULL = "ROOM_FULL"
    INVALID_ROOM = "INVALID_ROOM"
    INVALID_MESSAGE = "INVALID_MESSAGE"
    UNKNOWN_ACTION = "UNKNOWN_ACTION"
    FORBIDDEN = "FORBIDDEN"
    NOT_IN_ROOM = "NOT_IN_ROOM"
    MESSAGE_TOO_LARGE = "MESSAGE_TOO_LARGE"
    INTERNAL = "INTERNAL"


class Severity(StrEnum):
    """How serious an alert is, least first (an `alerts` subscription's `min_severity`)."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


class Permission(StrEnum):
    """What an access token's `permissions` grant. `admin` stands for every other one."""

    READ_MARKET_DATA = "read:market_data"
    READ_PREDICTIONS = "read:predictions"
    READ_ALERTS = "read:alerts"
    READ_PERFORMANCE = "read:performance"
    READ_SYSTEM_STATUS = "read:system_status"
    READ_MARKET_REGIME = "read:market_regime"
    ROOMS_JOIN = "rooms:join"
    ROOMS_SEND = "rooms:send"
    ADMIN = "admin"

    @classmethod
    def to_read(cls, stream_type: StreamType) -> Permission:
        """The permission that reads a stream type's streams."""
        return _READ_PERMISSIONS[stream_type]


_READ_PERMISSIONS: dict[StreamType, Permission] = {
    StreamType.MARKET_DATA: Permission.READ_MARKET_DATA,
    StreamType.PREDICTIONS: Permission.READ_PREDICTIONS,
    StreamType.ALERTS: Permission.READ_ALERTS,
    StreamType.PERFORMANCE: Permission.READ_PERFORMANCE,
    StreamType.SYSTEM_STATUS: Permission.READ_SYSTEM_STATUS,
    StreamType.MARKET_REGIME: Permission.READ_MARKET_REGIME,
}
