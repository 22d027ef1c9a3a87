"""The wire protocol as the server applies it: parsing client frames, what actions cost, errors and batches.

The contract itself (names, client frames, server messages and their payloads)
is the quanttrade_protocol package, which the Python client installs too. The
names the backend's modules share are re-exported here; the reply payloads are
imported from quanttrade_protocol.messages by the service that builds them.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from pydantic import TypeAdapter, ValidationError

from quanttrade_protocol.enums import ErrorCode, MessageType, Permission, Severity, StreamType
from quanttrade_protocol.frames import (
    CLIENT_FRAMES,
    KNOWN_ACTIONS,
    MAX_INTERVAL_SECONDS,
    MAX_SEQ,
    MIN_INTERVAL_SECONDS,
    STREAM_SPECS,
    SYMBOL_PATTERN,
    WILDCARD,
    ClientFrame,
    Hello,
    JoinRoom,
    LeaveRoom,
    Ping,
    Refresh,
    Resume,
    SendRoomMessage,
    StreamId,
    StreamSpec,
    Subscribe,
    Unsubscribe,
    action_of,
    stream_spec,
)
from quanttrade_protocol.messages import ErrorPayload, Payload, ServerMessage, new_message_id, utc_now_iso

__all__ = [
    "ACTION_COSTS",
    "CLIENT_FRAMES",
    "KNOWN_ACTIONS",
    "MAX_INTERVAL_SECONDS",
    "MAX_SEQ",
    "MIN_INTERVAL_SECONDS",
    "PER_SYMBOL_STREAM_TYPES",
    "STREAM_SPECS",
    "SYMBOL_PATTERN",
    "UNPARSED_FRAME_COST",
    "WILDCARD",
    "WILDCARD_SUBSCRIPTION_COST",
    "ClientFrame",
    "ErrorCode",
    "Hello",
    "JoinRoom",
    "LeaveRoom",
    "MessageType",
    "Payload",
    "Permission",
    "Ping",
    "ProtocolError",
    "Refresh",
    "Resume",
    "SendRoomMessage",
    "ServerMessage",
    "Severity",
    "StreamId",
    "StreamSpec",
    "StreamType",
    "Subscribe",
    "Unsubscribe",
    "action_of",
    "describe_validation_error",
    "error_message",
    "new_message_id",
    "pack_batches",
    "parse_client_frame",
    "stream_spec",
    "subscription_cost",
    "utc_now_iso",
]

# How much of a level's subscription budget (Limits.subscriptions_*) a subscription key uses.
# A symbol stream, a type-level stream (`alerts:*`, `system_status:*`) and a data room are
# one each. A wildcard over a per-symbol feed (`market_data:*`, `predictions:*`) delivers
# every symbol, so it is priced as a block of symbols: a free level (5) cannot hold one,
# basic (20) two, premium and enterprise (50) five. The figure is fixed in code, not
# configured, so a subscription always gives back exactly what it took.
PER_SYMBOL_STREAM_TYPES = frozenset({StreamType.MARKET_DATA, StreamType.PREDICTIONS})
WILDCARD_SUBSCRIPTION_COST = 10


def subscription_cost(stream_key: str) -> int:
    stream = StreamId.parse(stream_key)
    if stream is not None and stream.is_wildcard and stream.stream_type in PER_SYMBOL_STREAM_TYPES:
        return WILDCARD_SUBSCRIPTION_COST
    return 1


# What each action weighs against a connection's rate budget (Limits.messages_per_second
# units per second). A ping is the unit; an action that writes to DynamoDB, replays
# history or posts to a room's members weighs more, so a flood of cheap-looking frames
# cannot buy a hundred times the work of pings. A frame that does not parse weighs 1.
ACTION_COSTS: dict[str, int] = {
    "ping": 1,
    "hello": 2,
    "subscribe": 10,
    "unsubscribe": 10,
    "joinRoom": 10,
    "leaveRoom": 10,
    "sendRoomMessage": 10,
    "refresh": 10,
    "resume": 50,
}
UNPARSED_FRAME_COST = 1


@cache
def _client_frame() -> TypeAdapter[Any]:
    """Built on the first frame, not at import: $connect imports the protocol and parses none."""
    return TypeAdapter(ClientFrame)


class ProtocolError(Exception):
    """A client frame we cannot act on. Carries the error code and a plain-words message."""

    def __init__(self, code: ErrorCode, message: str, request_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


def parse_client_frame(body: str | bytes | None) -> Any:
    """Parse one client frame, or raise ProtocolError with INVALID_MESSAGE / UNKNOWN_ACTION."""
    try:
        raw = json.loads(body or "")
    except (ValueError, TypeError, RecursionError):  # RecursionError: nesting deeper than the parser allows
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "Frame is not valid JSON") from None
    if not isinstance(raw, dict):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "Frame must be a JSON object")
    request_id = raw.get("request_id") if isinstance(raw.get("request_id"), str) else None
    if request_id is not None and (len(request_id) > 128 or not _is_utf8(request_id)):
        request_id = None
    action = raw.get("action")
    if not isinstance(action, str) or not action:
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "Frame needs a string 'action'", request_id)
    if action not in KNOWN_ACTIONS:
        shown = action[:64].encode(errors="replace").decode()
        raise ProtocolError(ErrorCode.UNKNOWN_ACTION, f"Unknown action '{shown}'", request_id)
    try:
        return _client_frame().validate_python(raw)
    except ValidationError as error:
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, describe_validation_error(error), request_id) from None


def _is_utf8(text: str) -> bool:
    """JSON escapes can carry lone surrogates (\\ud800), which no reply can serialise: never echo those."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def describe_validation_error(error: ValidationError) -> str:
    """Plain words for the first few problems, without echoing the input back."""
    parts = []
    for item in error.errors(include_url=False, include_input=False)[:3]:
        # Keys in `loc` are the client's own (extra fields, filter names): cut them short.
        where = ".".join(str(part)[:64] for part in item["loc"])
        parts.append(f"{where}: {item['msg']}" if where else item["msg"])
    return "; ".join(parts)


# ---------------------------------------------------------------- server messages


def error_message(code: ErrorCode, message: str, request_id: str | None = None) -> ServerMessage:
    return ServerMessage(
        message_type=MessageType.ERROR,
        payload=ErrorPayload(error_code=code, message=message),
        request_id=request_id,
    )


def pack_batches(messages: list[str], max_bytes: int) -> list[bytes]:
    """Frames for a run of serialised messages, in order: one message goes out as
    itself, several as one `batch` message, split so no frame exceeds
    `max_bytes` (API Gateway's 128 KB). Built by concatenation: the messages are
    already JSON and are not parsed again."""
    frames: list[bytes] = []
    run: list[bytes] = []
    size = 0
    envelope_size = 200
    for message in messages:
        data = message.encode()
        if run and size + len(data) + 1 + envelope_size > max_bytes:
            frames.append(_frame(run))
            run, size = [], 0
        run.append(data)
        size += len(data) + 1
    if run:
        frames.append(_frame(run))
    return frames


def _frame(run: list[bytes]) -> bytes:
    if len(run) == 1:
        return run[0]
    head = ServerMessage(message_type=MessageType.BATCH, payload={"messages": []}).to_json().encode()
    return head.replace(b'"messages":[]', b'"messages":[' + b",".join(run) + b"]", 1)
