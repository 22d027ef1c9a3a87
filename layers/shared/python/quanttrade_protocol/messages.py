"""Server messages: one envelope (`ServerMessage`) and the payload of every reply and notice.

The service builds its replies from these models, the AsyncAPI document is
generated from them, and the Python client reads with them.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, WithJsonSchema

from quanttrade_protocol.data import DataPayload
from quanttrade_protocol.enums import ErrorCode, MessageType


def utc_now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_message_id() -> str:
    return uuid.uuid4().hex


class Payload(BaseModel):
    """The payload of a reply or notice. Validators and serialisers are built on first use (`defer_build`),
    not at import: the authorizer and $connect import this module and never send a reply."""

    model_config = ConfigDict(extra="forbid", defer_build=True)


class ServerMessage(BaseModel):
    """Every server message has this envelope. `request_id` echoes the request a message answers; `stream` and
    `seq` are set on data messages; `room` and `source` on room traffic."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    message_id: str = Field(default_factory=new_message_id)
    message_type: MessageType
    # A reply's or notice's payload is a Payload model, a data message's a DataPayload (the fan-out serialises
    # it once per event and sends the same text to every subscriber). A batch holds already serialised
    # messages: its payload is a plain dictionary.
    payload: Annotated[
        SerializeAsAny[Payload] | SerializeAsAny[DataPayload] | dict[str, Any],
        WithJsonSchema({"type": "object", "description": "Its shape depends on `message_type`"}),
    ] = {}
    timestamp: str = Field(default_factory=utc_now_iso)
    source: str | None = None
    target: str | None = None
    room: str | None = None
    request_id: str | None = None
    stream: str | None = None
    seq: int | None = None

    def to_json(self) -> str:
        return self.model_dump_json(exclude_none=True)


# ---------------------------------------------------------------- replies and notices


class ConnectionLimits(Payload):
    """The limits that apply to this connection."""

    max_subscriptions: int = Field(
        description="Subscription budget of this level: a symbol stream, a type-level stream and a data room "
        "count 1 each, a wildcard over a per-symbol feed counts `wildcard_subscription_cost`"
    )
    wildcard_subscription_cost: int = Field(
        description="What `market_data:*` or `predictions:*` (every symbol) counts toward `max_subscriptions`"
    )
    max_rooms: int = Field(description="Rooms one connection may be in")
    max_room_members: int = Field(description="Members (users, one seat each) one room may have")
    max_room_message_bytes: int = Field(description="Largest `sendRoomMessage` message, UTF-8 bytes")
    messages_per_second: int = Field(
        description="Rate budget per second, in units of `action_costs` (a ping is 1); over it, RATE_LIMIT"
    )
    action_costs: dict[str, int] = Field(description="What each action weighs against `messages_per_second`")
    max_resume_messages: int = Field(description="Messages one `resume` replays at most, over all its streams")
    room_messages_per_minute: int = Field(
        description="Room messages one user may send to one room per minute (sliding window, all connections)"
    )
    max_message_bytes: int = Field(description="Largest server frame (API Gateway: 128 KB)")
    idle_timeout_seconds: int = Field(description="The gateway closes a connection idle this long")
    history_seconds: int = Field(description="How long stream history is kept for resume")


class ConnectPayload(Payload):
    """Answer to `hello`: the session and its limits."""

    client_id: str = Field(description="This connection's id (API Gateway connection id)")
    session_token: str = Field(
        description="Session token (a JWT, audience `quanttrade-session`); send it in `resume` after a reconnect. "
        "Single-use: each `resumed` answer carries the next one"
    )
    user_id: str
    limits: ConnectionLimits


class StreamsChangedPayload(Payload):
    """Answer to `subscribe` / `unsubscribe`."""

    success: bool
    message: str
    streams: list[str] = Field(description="Subscription keys that changed: `market_data:AAPL`, `alerts:*`")


class SubscribedPayload(StreamsChangedPayload):
    """Answer to `subscribe`."""

    last_seq: dict[str, int] = Field(
        default={},
        description="For each single-symbol stream, the seq just before this subscription's first message: "
        "name it in `resume.last_seq` to replay what was missed even before any message arrived",
    )


MEMBER_ID = (
    "This user's pseudonymous id in this room: the same for all of the user's connections in the room, "
    "different in every room, never the user id or a connection id"
)


class JoinRoomPayload(Payload):
    """Answer to `joinRoom`."""

    success: bool
    message: str
    already_member: bool
    member_id: str = Field(description=f"{MEMBER_ID}; the `source` of this user's room messages")


class LeaveRoomPayload(Payload):
    """Answer to `leaveRoom`."""

    success: bool
    message: str


class RoomMemberPayload(Payload):
    """Sent to the other members of a chat room of at most 100 members when a user joins or leaves it
    (never in data rooms)."""

    member_id: str = Field(description=f"Who joined or left: {MEMBER_ID}")


class RoomMessagePayload(Payload):
    message: str
    member_id: str = Field(description=f"The sender: {MEMBER_ID}")


class PongPayload(Payload):
    server_time: float = Field(description="Server clock, epoch seconds")


class RefreshPayload(Payload):
    success: bool
    expires_at: int = Field(description="Expiry of the new access token, epoch seconds")
    dropped: list[str] = Field(
        default=[],
        description="Subscription keys and rooms removed because the new token no longer permits them, then, "
        "after a downgrade, the subscriptions over the new level's `max_subscriptions` (the last in key order first)",
    )


class StreamReplay(Payload):
    """What `resume` did for one stream named in `last_seq`."""

    recovered: bool = Field(description="Every message after the given seq was replayed (false: a gap remains)")
    replayed: int = Field(description="Messages replayed before this answer")
    first_seq: int | None = Field(None, description="First replayed seq")
    last_seq: int | None = Field(None, description="The stream's latest seq on the server")
    error: ErrorCode | None = Field(
        None,
        description="Why the stream was not replayed: FORBIDDEN when the token may not read it or the connection "
        "holds no subscription or data room that receives it",
    )


class ResumedPayload(Payload):
    """Answer to `resume`, sent after the replayed messages."""

    success: bool
    recovered: bool = Field(description="Every stream in `last_seq` was recovered")
    streams: dict[str, StreamReplay]
    subscriptions: list[str] = Field(description="Subscription keys the session had; they are active again")
    rooms: list[str] = Field(description="Rooms the connection is back in")
    dropped: list[str] = Field(
        default=[],
        description="Subscription keys and rooms the session had that were not restored: the current token does "
        "not permit them (the same check as `joinRoom` and `subscribe`), or a limit was reached",
    )
    client_id: str
    session_token: str = Field(
        description="The next session token; the one this resume used is spent (single-use), so keep this one"
    )


class ErrorPayload(Payload):
    error_code: ErrorCode
    message: str = Field(description="Plain words, safe to show; never a stack trace")


class HeartbeatPayload(Payload):
    """Reserved: clients must accept a heartbeat and may ignore it. This server version does not send one."""
