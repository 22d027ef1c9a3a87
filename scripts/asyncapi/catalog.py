"""What each message of the protocol is: the prose the AsyncAPI document adds to the protocol's models.

Per server message kind its payload model and summary, per error code its
meaning, per action its summary, replies and example frame. The generator
checks these tables against the protocol (scripts/generate_asyncapi.py: build).
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel

from quanttrade_protocol import messages
from quanttrade_protocol.data import DATA_PAYLOADS
from quanttrade_ws import upstream
from quanttrade_ws.protocol import ErrorCode, MessageType


class ServerKind:
    """One server message kind: its message type, payload model and what it means."""

    data_types: ClassVar[dict[MessageType, type[upstream._Detail]]] = {
        detail.message_type: detail for detail in upstream.DETAILS_BY_TYPE.values()
    }

    def __init__(
        self,
        key: str,
        message_type: MessageType,
        payload: type[BaseModel],
        summary: str,
        *,
        reply: bool = False,
        data: bool = False,
        room: bool = False,
    ) -> None:
        self.key, self.message_type, self.payload, self.summary = key, message_type, payload, summary
        self.reply, self.data, self.room = reply, data, room


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


DATA_SUMMARIES = {
    MessageType.MARKET_DATA: "A market tick. Stream `market_data:<SYMBOL>`.",
    MessageType.PREDICTION: "A model prediction. Stream `predictions:<SYMBOL>`.",
    MessageType.ALERT: "An alert. Stream `alerts`, or `alerts:<SYMBOL>` when it names a symbol.",
    MessageType.PERFORMANCE: "Performance metrics. Stream `performance`, or `performance:<STRATEGY>`.",
    MessageType.SYSTEM_STATUS: "A service's health. Stream `system_status`.",
    MessageType.MARKET_REGIME: "The market regime. Stream `market_regime`, or `market_regime:<SYMBOL or MARKET>`.",
}

SERVER_KINDS: list[ServerKind] = [
    ServerKind("connect", MessageType.CONNECT, messages.ConnectPayload, "Answer to `hello`", reply=True),
    ServerKind("subscribed", MessageType.SUBSCRIBE, messages.SubscribedPayload, "Answer to `subscribe`", reply=True),
    ServerKind(
        "unsubscribed", MessageType.UNSUBSCRIBE, messages.StreamsChangedPayload, "Answer to `unsubscribe`", reply=True
    ),
    ServerKind(
        "joinedRoom", MessageType.JOIN_ROOM, messages.JoinRoomPayload, "Answer to `joinRoom`", reply=True, room=True
    ),
    ServerKind(
        "memberJoined",
        MessageType.JOIN_ROOM,
        messages.RoomMemberPayload,
        "Another client joined a room this connection is in",
        room=True,
    ),
    ServerKind(
        "leftRoom", MessageType.LEAVE_ROOM, messages.LeaveRoomPayload, "Answer to `leaveRoom`", reply=True, room=True
    ),
    ServerKind(
        "memberLeft",
        MessageType.LEAVE_ROOM,
        messages.RoomMemberPayload,
        "Another client left a room this connection is in",
        room=True,
    ),
    ServerKind(
        "roomMessage",
        MessageType.ROOM_MESSAGE,
        messages.RoomMessagePayload,
        "A message sent to a room. The sender's own copy carries its `request_id` and is the answer to "
        "`sendRoomMessage`; the other members' copies carry none.",
        reply=True,
        room=True,
    ),
    ServerKind("pong", MessageType.PONG, messages.PongPayload, "Answer to `ping`", reply=True),
    ServerKind("refreshed", MessageType.REFRESH, messages.RefreshPayload, "Answer to `refresh`", reply=True),
    ServerKind("resumed", MessageType.RESUMED, messages.ResumedPayload, "Answer to `resume`", reply=True),
    *[
        ServerKind(_camel(message_type.value), message_type, payload, DATA_SUMMARIES[message_type], data=True)
        for message_type, payload in DATA_PAYLOADS.items()
    ],
    ServerKind("heartbeat", MessageType.HEARTBEAT, messages.HeartbeatPayload, "Reserved for server heartbeats"),
    ServerKind(
        "error",
        MessageType.ERROR,
        messages.ErrorPayload,
        "A request failed (with its `request_id`), or the connection broke a rule (RATE_LIMIT, without one)",
        reply=True,
    ),
]

ERROR_MEANINGS: dict[ErrorCode, str] = {
    ErrorCode.AUTH_FAILED: "The access token or session token was refused or has expired, a session token was "
    "already used, or `refresh` sent a token older (`iat`) than the one in use. After `Session expired` the server "
    "closes the connection: reconnect with a fresh token.",
    ErrorCode.RATE_LIMIT: "Frames worth more than `limits.messages_per_second` units in one second (each action "
    "weighs `limits.action_costs`). The frame was dropped and the error names no request; after repeated warnings "
    "the connection is closed. Also: more than `limits.room_messages_per_minute` room messages to one room, or "
    "more than 10 joins of one room in a minute (the setting `limits.room_joins_per_minute`), both per user; or "
    "more than 3 resumes a minute on one connection (`limits.resumes_per_connection`; the session token is not "
    "spent). This error names the request; the connection stays open.",
    ErrorCode.SUBSCRIPTION_LIMIT: "The subscription level's `limits.max_subscriptions` is reached (data rooms count "
    "1 each, a per-symbol wildcard `limits.wildcard_subscription_cost`).",
    ErrorCode.ROOM_LIMIT: "This connection is already in `limits.max_rooms` rooms.",
    ErrorCode.ROOM_FULL: "The room already has `limits.max_room_members` members (users: all of a user's "
    "connections share one seat).",
    ErrorCode.INVALID_ROOM: "Room names are 1-64 characters of A-Z a-z 0-9 _ . : -, and a data room has one "
    "spelling (`market_data_<SYMBOL>`, `predictions_<SYMBOL>` with the symbol in upper case, `alerts`).",
    ErrorCode.INVALID_MESSAGE: "The frame is not JSON, misses a field, or has a bad value (an unknown filter, an "
    "`interval` outside 0.001-86400 s, ...).",
    ErrorCode.UNKNOWN_ACTION: "The `action` is none of the protocol's actions (the `receive` operations).",
    ErrorCode.FORBIDDEN: "The token lacks the permission: `read:<stream type>`, `rooms:join`, `rooms:send`, or the "
    "room's own (`read:market_data` for `market_data_*`, `read:predictions` for `predictions_*`, `read:alerts` "
    "for `alerts`, `admin` for the reserved `admin`, `system`, `admin.*` and `system.*` in any case).",
    ErrorCode.NOT_IN_ROOM: "`leaveRoom` or `sendRoomMessage` for a room this connection has not joined.",
    ErrorCode.MESSAGE_TOO_LARGE: "A room message longer than `limits.max_room_message_bytes`.",
    ErrorCode.INTERNAL: "The server failed; the request may be retried.",
}

# Per action: (summary, reply message keys, example frame). The keys of this table
# must be exactly the protocol's actions (checked when generating).
ACTIONS: dict[str, tuple[str, list[str], dict[str, Any]]] = {
    "hello": (
        "Start a session. Send it first on a new connection; the answer carries the session token and the limits.",
        ["connect"],
        {"action": "hello", "request_id": "r1"},
    ),
    "subscribe": (
        "Subscribe to streams: a stream type, optionally one symbol, at most one update per `interval` seconds, "
        "narrowed by `filters`; with `latest_only`, only the newest of a stream's messages waiting for the same "
        "frame is sent (for a slow consumer). A new `market_data` subscriber with a symbol also gets the latest "
        "tick at once.",
        ["subscribed"],
        {
            "action": "subscribe",
            "request_id": "r2",
            "streams": [
                {"stream_type": "market_data", "symbol": "AAPL", "filters": {"min_volume": "1000"}},
                {"stream_type": "alerts", "filters": {"min_severity": "high"}},
            ],
        },
    ),
    "unsubscribe": (
        "Stop streams subscribed before (same stream type and symbol).",
        ["unsubscribed"],
        {"action": "unsubscribe", "request_id": "r3", "streams": [{"stream_type": "alerts"}]},
    ),
    "joinRoom": (
        "Join a room. Data rooms `market_data_<SYMBOL>`, `predictions_<SYMBOL>` and `alerts` also receive "
        "the matching upstream events.",
        ["joinedRoom"],
        {"action": "joinRoom", "request_id": "r4", "room": "desk.equities"},
    ),
    "leaveRoom": ("Leave a room.", ["leftRoom"], {"action": "leaveRoom", "request_id": "r5", "room": "desk.equities"}),
    "sendRoomMessage": (
        "Send a text message to every member of a room this connection is in.",
        ["roomMessage"],
        {"action": "sendRoomMessage", "request_id": "r6", "room": "desk.equities", "message": "AAPL looks heavy"},
    ),
    "ping": (
        "Keep the connection alive and measure the round trip. API Gateway closes a connection after 10 idle "
        "minutes and does not count WebSocket ping frames, so clients send this every few minutes.",
        ["pong"],
        {"action": "ping", "request_id": "r7"},
    ),
    "refresh": (
        "Replace the access token of this connection before it expires (API Gateway checked the token only "
        "at connect; the server enforces its expiry on every later frame). The new token must be no older "
        "(`iat`) than the one in use, so an older, broader token cannot undo a downgrade. Streams and rooms the new "
        "token does not permit, and subscriptions over its level's limit, are dropped and named in `dropped`.",
        ["refreshed"],
        {"action": "refresh", "request_id": "r8", "token": "<new access token>"},
    ),
    "resume": (
        "Continue a session on a new connection: its subscriptions and rooms move to this connection, and every "
        "stream named in `last_seq` is replayed from the message after that seq (history is kept for "
        "`limits.history_seconds`). Replayed messages arrive before the `resumed` answer; live messages may "
        "arrive between them, so order by `seq` per stream and drop duplicates by (`stream`, `seq`). "
        "A session token resumes once: `resumed` carries the next one, a spent token answers AUTH_FAILED. "
        "An unknown or expired session answers AUTH_FAILED: send `hello` and subscribe again.",
        ["resumed"],
        {
            "action": "resume",
            "request_id": "r9",
            "session_token": "<session token from connect or resumed>",
            "last_seq": {"market_data:AAPL": 41, "alerts": 7},
        },
    ),
}
