"""QuantTrade WebSocket API client: typed requests, ordered exactly-once streams, automatic reconnect and resume.

The protocol's names (ErrorCode, MessageType, StreamType) are quanttrade_protocol's, the package the
server validates and answers with, re-exported here.
"""

from quanttrade_client.client import QuantTradeClient, TokenProvider, backoff_delay
from quanttrade_client.errors import (
    ERRORS_BY_CODE,
    AuthFailed,
    ClientClosed,
    ConnectionLost,
    Forbidden,
    InternalError,
    InvalidMessage,
    InvalidRoom,
    MessageTooLarge,
    NotInRoom,
    QuantTradeError,
    RateLimited,
    RequestTimeout,
    RoomFull,
    RoomLimit,
    SubscriptionLimit,
    UnknownAction,
)
from quanttrade_client.messages import Message
from quanttrade_client.session import ResumeReport, stream_key
from quanttrade_protocol.enums import ErrorCode, MessageType, StreamType

__all__ = [
    "ERRORS_BY_CODE",
    "AuthFailed",
    "ClientClosed",
    "ConnectionLost",
    "ErrorCode",
    "Forbidden",
    "InternalError",
    "InvalidMessage",
    "InvalidRoom",
    "Message",
    "MessageTooLarge",
    "MessageType",
    "NotInRoom",
    "QuantTradeClient",
    "QuantTradeError",
    "RateLimited",
    "RequestTimeout",
    "ResumeReport",
    "RoomFull",
    "RoomLimit",
    "StreamType",
    "SubscriptionLimit",
    "TokenProvider",
    "UnknownAction",
    "backoff_delay",
    "stream_key",
]
