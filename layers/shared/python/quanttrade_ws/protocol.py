"""The wire protocol: client frames in, server messages out.

These models are the contract. The handlers validate with them, the Python
client builds with them, and the AsyncAPI document is generated from them.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, ValidationError


class StreamType(StrEnum):
    MARKET_DATA = "market_data"
    PREDICTIONS = "predictions"
    ALERTS = "alerts"
    PERFORMANCE = "performance"
    SYSTEM_STATUS = "system_status"
    MARKET_REGIME = "market_regime"


class MessageType(StrEnum):
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


SYMBOL_PATTERN = r"^[A-Za-z0-9._^=-]{1,24}$"
# Bounds that keep every number a client sends storable by DynamoDB (38 significant digits,
# magnitudes 1e-130 to 1e125): a value outside them is INVALID_MESSAGE, never a store failure.
MIN_INTERVAL_SECONDS = 0.001
MAX_INTERVAL_SECONDS = 86400
MAX_SEQ = 2**63 - 1

# ---------------------------------------------------------------- client frames

Symbol = Annotated[str, StringConstraints(pattern=SYMBOL_PATTERN)]
RequestId = Annotated[str, StringConstraints(max_length=128)]
FilterValue = Annotated[str, StringConstraints(max_length=128)]


class _Frame(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    request_id: RequestId | None = None


class StreamSpec(BaseModel):
    """One stream a client wants: a stream type, optionally narrowed to one symbol."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    stream_type: StreamType
    symbol: Symbol | None = None
    interval: Annotated[float, Field(ge=MIN_INTERVAL_SECONDS, le=MAX_INTERVAL_SECONDS)] | None = None
    filters: Annotated[dict[Annotated[str, StringConstraints(max_length=64)], FilterValue], Field(max_length=16)] = {}
    # Conflation: of the messages of one stream waiting for the same post, only the newest goes out.
    # The client's choice (a price board wants it, a chart does not); skipped seqs are gaps, as with `interval`.
    latest_only: bool = False

    @property
    def key(self) -> str:
        """The subscription key fan-out Queries: `market_data:AAPL`, or `market_data:*` for every symbol."""
        return f"{self.stream_type.value}:{self.symbol.upper() if self.symbol else '*'}"


# How much of a level's subscription budget (Limits.subscriptions_*) a subscription key uses.
# A symbol stream, a type-level stream (`alerts:*`, `system_status:*`) and a data room are
# one each. A wildcard over a per-symbol feed (`market_data:*`, `predictions:*`) delivers
# every symbol, so it is priced as a block of symbols: a free level (5) cannot hold one,
# basic (20) two, premium and enterprise (50) five. The figure is fixed in code, not
# configured, so a subscription always gives back exactly what it took.
PER_SYMBOL_STREAM_TYPES = frozenset({StreamType.MARKET_DATA, StreamType.PREDICTIONS})
WILDCARD_SUBSCRIPTION_COST = 10


def subscription_cost(stream_key: str) -> int:
    stream_type, _, symbol = stream_key.partition(":")
    return WILDCARD_SUBSCRIPTION_COST if symbol == "*" and stream_type in PER_SYMBOL_STREAM_TYPES else 1


class Hello(_Frame):
    action: Literal["hello"]


class Subscribe(_Frame):
    action: Literal["subscribe"]
    streams: Annotated[list[StreamSpec], Field(min_length=1, max_length=50)]


class Unsubscribe(_Frame):
    action: Literal["unsubscribe"]
    streams: Annotated[list[StreamSpec], Field(min_length=1, max_length=50)]


class JoinRoom(_Frame):
    action: Literal["joinRoom"]
    room: Annotated[str, StringConstraints(max_length=256)]


class LeaveRoom(_Frame):
    action: Literal["leaveRoom"]
    room: Annotated[str, StringConstraints(max_length=256)]


class SendRoomMessage(_Frame):
    action: Literal["sendRoomMessage"]
    room: Annotated[str, StringConstraints(max_length=256)]
    # The configured room message limit is checked by the domain (MESSAGE_TOO_LARGE);
    # this bound only keeps absurd frames out of the parser.
    message: Annotated[str, StringConstraints(max_length=128 * 1024)]


class Ping(_Frame):
    action: Literal["ping"]


class Refresh(_Frame):
    action: Literal["refresh"]
    token: Annotated[str, StringConstraints(min_length=1, max_length=8192)]


StreamName = Annotated[str, StringConstraints(max_length=128)]


class Resume(_Frame):
    action: Literal["resume"]
    session_token: Annotated[str, StringConstraints(min_length=1, max_length=2048)]
    last_seq: Annotated[
        dict[Annotated[str, StringConstraints(max_length=128)], Annotated[int, Field(ge=0, le=MAX_SEQ)]],
        Field(max_length=100),
    ] = {}


ClientFrame = Annotated[
    Hello | Subscribe | Unsubscribe | JoinRoom | LeaveRoom | SendRoomMessage | Ping | Refresh | Resume,
    Field(discriminator="action"),
]
CLIENT_FRAMES: tuple[type[_Frame], ...] = (
    Hello,
    Subscribe,
    Unsubscribe,
    JoinRoom,
    LeaveRoom,
    SendRoomMessage,
    Ping,
    Refresh,
    Resume,
)
KNOWN_ACTIONS = frozenset(frame.model_fields["action"].annotation.__args__[0] for frame in CLIENT_FRAMES)  # type: ignore[union-attr]

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
_client_frame: TypeAdapter[Any] = TypeAdapter(ClientFrame)


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
        return _client_frame.validate_python(raw)
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


def utc_now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_message_id() -> str:
    return uuid.uuid4().hex


class ServerMessage(BaseModel):
    """The seed's WebSocketMessage envelope. `stream` and `seq` are set on data messages."""

    model_config = ConfigDict(extra="forbid")

    message_id: str = Field(default_factory=new_message_id)
    message_type: MessageType
    payload: dict[str, Any] = {}
    timestamp: str = Field(default_factory=utc_now_iso)
    source: str | None = None
    target: str | None = None
    room: str | None = None
    request_id: str | None = None
    stream: str | None = None
    seq: int | None = None

    def to_json(self) -> str:
        return self.model_dump_json(exclude_none=True)


def error_message(code: ErrorCode, message: str, request_id: str | None = None) -> ServerMessage:
    return ServerMessage(
        message_type=MessageType.ERROR,
        payload={"error_code": code.value, "message": message},
        request_id=request_id,
    )


def pack_batches(messages: list[str], max_bytes: int) -> list[bytes]:
    """Frames for a run of serialised messages, in order: one message goes out as
    itself, several as the seed's `batch` message, split so no frame exceeds
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
