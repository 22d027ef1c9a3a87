"""Generate the AsyncAPI 3.0 document of the WebSocket protocol from the models the handlers use.

    python scripts/generate_asyncapi.py > docs/asyncapi.yaml     # regenerate
    python scripts/generate_asyncapi.py --check                   # fail if the checked-in file drifted

Every schema is a model of the quanttrade_protocol package: client frames (what
the service validates with), the envelope and reply payloads (what it builds its
replies from), data payloads (the fields upstream events are validated with, as
fan-out sends them) and the enums. This script only adds the prose (summaries,
error meanings, examples) and assembles the document;
tests/unit/test_asyncapi.py also drives the real service through every action
and validates what it sends against the result.
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import sys
import tomllib
from pathlib import Path
from typing import Any, ClassVar

import yaml
from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import models_json_schema

from quanttrade_protocol.data import DATA_PAYLOADS, data_payload
from quanttrade_protocol.messages import (
    ConnectPayload,
    ErrorPayload,
    HeartbeatPayload,
    JoinRoomPayload,
    LeaveRoomPayload,
    PongPayload,
    RefreshPayload,
    ResumedPayload,
    RoomMemberPayload,
    RoomMessagePayload,
    StreamsChangedPayload,
    SubscribedPayload,
)
from quanttrade_ws import protocol, topology, upstream
from quanttrade_ws.protocol import ErrorCode, MessageType, ServerMessage, StreamType

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "docs" / "asyncapi.yaml"
REF = "#/components/schemas/{model}"
EXAMPLE_TIME = "2026-01-05T14:30:00.125Z"

# ---------------------------------------------------------------- what each message is


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
    ServerKind("connect", MessageType.CONNECT, ConnectPayload, "Answer to `hello`", reply=True),
    ServerKind("subscribed", MessageType.SUBSCRIBE, SubscribedPayload, "Answer to `subscribe`", reply=True),
    ServerKind("unsubscribed", MessageType.UNSUBSCRIBE, StreamsChangedPayload, "Answer to `unsubscribe`", reply=True),
    ServerKind("joinedRoom", MessageType.JOIN_ROOM, JoinRoomPayload, "Answer to `joinRoom`", reply=True, room=True),
    ServerKind(
        "memberJoined",
        MessageType.JOIN_ROOM,
        RoomMemberPayload,
        "Another client joined a room this connection is in",
        room=True,
    ),
    ServerKind("leftRoom", MessageType.LEAVE_ROOM, LeaveRoomPayload, "Answer to `leaveRoom`", reply=True, room=True),
    ServerKind(
        "memberLeft",
        MessageType.LEAVE_ROOM,
        RoomMemberPayload,
        "Another client left a room this connection is in",
        room=True,
    ),
    ServerKind(
        "roomMessage",
        MessageType.ROOM_MESSAGE,
        RoomMessagePayload,
        "A message sent to a room. The sender's own copy carries its `request_id` and is the answer to "
        "`sendRoomMessage`; the other members' copies carry none.",
        reply=True,
        room=True,
    ),
    ServerKind("pong", MessageType.PONG, PongPayload, "Answer to `ping`", reply=True),
    ServerKind("refreshed", MessageType.REFRESH, RefreshPayload, "Answer to `refresh`", reply=True),
    ServerKind("resumed", MessageType.RESUMED, ResumedPayload, "Answer to `resume`", reply=True),
    *[
        ServerKind(_camel(message_type.value), message_type, payload, DATA_SUMMARIES[message_type], data=True)
        for message_type, payload in DATA_PAYLOADS.items()
    ],
    ServerKind("heartbeat", MessageType.HEARTBEAT, HeartbeatPayload, "Reserved for server heartbeats"),
    ServerKind(
        "error",
        MessageType.ERROR,
        ErrorPayload,
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
    "the connection is closed. Also: more than `limits.room_messages_per_minute` room messages to one room (this "
    "error names the request; the connection stays open).",
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

DATA_EXAMPLES: dict[MessageType, dict[str, Any]] = {
    MessageType.MARKET_DATA: {
        "symbol": "AAPL",
        "price": 189.52,
        "volume": 1200.0,
        "timestamp": EXAMPLE_TIME,
        "bid": 189.51,
        "ask": 189.53,
    },
    MessageType.PREDICTION: {
        "symbol": "AAPL",
        "direction": "up",
        "confidence": 0.82,
        "horizon": "1h",
        "predicted_price": 191.0,
        "model": "lstm-v3",
        "timestamp": EXAMPLE_TIME,
    },
    MessageType.ALERT: {"alert_type": "price_spike", "message": "AAPL moved 3% in 5 minutes", "severity": "high"},
    MessageType.PERFORMANCE: {"metrics": {"sharpe": 1.9, "pnl": 15234.5}, "strategy": "momentum"},
    MessageType.SYSTEM_STATUS: {"service": "market-data", "status": "healthy", "message": ""},
    MessageType.MARKET_REGIME: {"market": "SPX", "regime": "trending", "confidence": 0.71},
}

REPLY_EXAMPLES: dict[str, dict[str, Any]] = {
    "connect": {
        "client_id": "Yx1aQc3LoAMCJgw=",
        "session_token": "eyJhbGciOiJIUzI1NiJ9.eyJzaWQiOiI2ZjEifQ.c2lnbmF0dXJl",
        "user_id": "trader-42",
        "limits": {
            "max_subscriptions": 50,
            "wildcard_subscription_cost": 10,
            "max_rooms": 10,
            "max_room_members": 1000,
            "max_room_message_bytes": 4096,
            "messages_per_second": 100,
            "action_costs": dict(protocol.ACTION_COSTS),
            "max_resume_messages": 5000,
            "room_messages_per_minute": 60,
            "max_message_bytes": 131072,
            "idle_timeout_seconds": 600,
            "history_seconds": 300,
        },
    },
    "subscribed": {
        "success": True,
        "message": "Subscribed to market_data:AAPL",
        "streams": ["market_data:AAPL"],
        "last_seq": {"market_data:AAPL": 40},
    },
    "unsubscribed": {"success": True, "message": "Unsubscribed from alerts:*", "streams": ["alerts:*"]},
    "joinedRoom": {
        "success": True,
        "message": "Joined desk.equities",
        "already_member": False,
        "member_id": "m-5b1f0c9e7a2d4c3b8e6f1a20",
    },
    "memberJoined": {"member_id": "m-0c4e9a7b2f1d3e5a6b8c9d01"},
    "leftRoom": {"success": True, "message": "Left desk.equities"},
    "memberLeft": {"member_id": "m-0c4e9a7b2f1d3e5a6b8c9d01"},
    "roomMessage": {"message": "AAPL looks heavy", "member_id": "m-0c4e9a7b2f1d3e5a6b8c9d01"},
    "pong": {"server_time": 1767623400.125},
    "refreshed": {"success": True, "expires_at": 1767709800, "dropped": []},
    "resumed": {
        "success": True,
        "recovered": True,
        "streams": {"market_data:AAPL": {"recovered": True, "replayed": 2, "first_seq": 42, "last_seq": 43}},
        "subscriptions": ["market_data:AAPL"],
        "rooms": ["desk.equities"],
        "dropped": [],
        "client_id": "Yx1aQc3LoAMCJgw=",
        "session_token": "eyJhbGciOiJIUzI1NiJ9.eyJzaWQiOiI2ZjEifQ.bmV3c2ln",
    },
    "heartbeat": {},
    "error": {"error_code": "ROOM_FULL", "message": "Room 'desk.equities' is full"},
}

# ---------------------------------------------------------------- the document


def build() -> dict[str, Any]:
    actions = sorted(protocol.KNOWN_ACTIONS)
    if sorted(ACTIONS) != actions or sorted(topology.ACTIONS) != actions:
        raise SystemExit(f"action table out of date: protocol has {actions}, generator has {sorted(ACTIONS)}")
    if set(ERROR_MEANINGS) != set(ErrorCode):
        raise SystemExit("every ErrorCode needs a meaning in ERROR_MEANINGS")
    if {kind.message_type for kind in SERVER_KINDS} != set(MessageType) - {MessageType.BATCH}:
        raise SystemExit("every MessageType needs a ServerKind")

    schemas = _schemas()
    frames = {protocol.action_of(frame): frame for frame in protocol.CLIENT_FRAMES}
    messages: dict[str, Any] = {}
    for action in ACTIONS:
        summary, _replies, example = ACTIONS[action]
        messages[action] = {
            "name": action,
            "title": f"{action} (client)",
            "summary": summary,
            "payload": {"$ref": REF.format(model=frames[action].__name__)},
            "examples": [{"name": action, "payload": example}],
        }
    for kind in SERVER_KINDS:
        schemas[_envelope_name(kind)] = _envelope(kind)
        messages[kind.key] = {
            "name": kind.message_type.value,
            "title": f"{kind.message_type.value} (server)",
            "summary": kind.summary,
            "payload": {"$ref": REF.format(model=_envelope_name(kind))},
            "examples": [{"name": kind.key, "payload": _example(kind)}],
        }
    data_kinds = [kind for kind in SERVER_KINDS if kind.data]
    schemas["BatchMessage"] = _batch_schema(data_kinds)
    messages["batch"] = {
        "name": MessageType.BATCH.value,
        "title": "batch (server)",
        "summary": "Several data messages for this connection in one frame, in order. Unpack and handle each.",
        "payload": {"$ref": REF.format(model="BatchMessage")},
        "examples": [{"name": "batch", "payload": _batch_example(data_kinds[:1])}],
    }

    def ref(key: str) -> dict[str, str]:
        return {"$ref": f"#/channels/root/messages/{key}"}

    operations: dict[str, Any] = {}
    for action, (summary, replies, _frame) in ACTIONS.items():
        operations[f"receive{action[0].upper()}{action[1:]}"] = {
            "action": "receive",
            "channel": {"$ref": "#/channels/root"},
            "title": action,
            "summary": summary,
            "messages": [ref(action)],
            "reply": {"channel": {"$ref": "#/channels/root"}, "messages": [ref(key) for key in [*replies, "error"]]},
        }
    operations["sendStreamData"] = {
        "action": "send",
        "channel": {"$ref": "#/channels/root"},
        "title": "Stream data",
        "summary": "Data messages of the subscribed streams and joined data rooms, one message or a `batch`.",
        "description": "Each carries `stream` and `seq`; `seq` grows by one per message of a stream. Filters and "
        "intervals skip messages, and `latest_only` drops all but the newest of a stream in one frame, so gaps are "
        "normal. Several messages to one connection go out as one `batch` (one per server batch, or per coalescing "
        "window when the stack sets one). A message can arrive twice (redelivery, resume): drop it by "
        "(`stream`, `seq`).",
        "messages": [ref(kind.key) for kind in data_kinds] + [ref("batch")],
    }
    operations["sendRoomActivity"] = {
        "action": "send",
        "channel": {"$ref": "#/channels/root"},
        "title": "Room activity",
        "summary": "Messages of joined rooms and their members joining and leaving.",
        "messages": [ref("roomMessage"), ref("memberJoined"), ref("memberLeft")],
    }
    operations["sendNotices"] = {
        "action": "send",
        "channel": {"$ref": "#/channels/root"},
        "title": "Notices",
        "summary": "Errors that answer no request (RATE_LIMIT) and heartbeats.",
        "messages": [ref("error"), ref("heartbeat")],
    }

    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "QuantTrade WebSocket API",
            "version": _version(),
            "description": _description(),
        },
        "defaultContentType": "application/json",
        "servers": {
            "aws": {
                "host": "{apiId}.execute-api.{region}.amazonaws.com",
                "pathname": "/{stage}",
                "protocol": "wss",
                "title": "API Gateway WebSocket API",
                "variables": {
                    "apiId": {"description": "The WebSocket API id (stack output)"},
                    "region": {"default": "us-east-1"},
                    "stage": {"default": "prod"},
                },
                "security": [{"$ref": "#/components/securitySchemes/accessToken"}],
            },
            "local": {
                "host": "127.0.0.1:8081",
                "protocol": "ws",
                "title": "Local stack (`make dev`)",
                "security": [{"$ref": "#/components/securitySchemes/accessToken"}],
            },
        },
        "channels": {
            "root": {
                "address": "/",
                "title": "The WebSocket connection",
                "description": "One connection per client: `wss://<host>/<stage>?token=<access token>`. Client "
                "frames are JSON objects with an `action`; the API routes on `$request.body.action`.",
                "messages": {key: {"$ref": f"#/components/messages/{key}"} for key in messages},
                "bindings": {
                    "ws": {
                        "method": "GET",
                        "query": {
                            "type": "object",
                            "properties": {
                                "token": {
                                    "type": "string",
                                    "maxLength": 8192,
                                    "description": "The access token (JWT). Checked once, by the $connect "
                                    "authorizer: 401 when missing or invalid.",
                                }
                            },
                            "required": ["token"],
                        },
                        "bindingVersion": "0.1.0",
                    }
                },
            }
        },
        "operations": operations,
        "components": {
            "schemas": schemas,
            "messages": messages,
            "securitySchemes": {
                "accessToken": {
                    "type": "httpApiKey",
                    "name": "token",
                    "in": "query",
                    "description": "JWT from the QuantTrade auth service (issuer `quanttrade-auth`, audience "
                    "`quanttrade-websocket`; claims `sub`, `exp`, `permissions`, `subscription_level`, "
                    "`client_type`).",
                }
            },
        },
    }


def _schemas() -> dict[str, Any]:
    models: list[tuple[type[BaseModel], Any]] = [(frame, "validation") for frame in protocol.CLIENT_FRAMES]
    models.append((ServerMessage, "serialization"))
    models += [(kind.payload, "serialization") for kind in SERVER_KINDS]
    _keys, document = models_json_schema(models, ref_template=REF)
    schemas: dict[str, Any] = document["$defs"]
    schemas["ErrorCode"]["description"] = "Error codes:\n\n" + "\n".join(
        f"- `{code.value}`: {meaning}" for code, meaning in ERROR_MEANINGS.items()
    )
    # The stream specs spell their stream type as a constant each; the enum still names them all in one place.
    schemas["StreamType"] = TypeAdapter(StreamType).json_schema()
    # The envelope's payload is described per message kind (_envelope); the common bases of the payload
    # models are no schemas of their own.
    schemas.pop("Payload", None)
    schemas.pop("DataPayload", None)
    return schemas


def _envelope_name(kind: ServerKind) -> str:
    return f"{kind.key[0].upper()}{kind.key[1:]}Message"


def _envelope(kind: ServerKind) -> dict[str, Any]:
    """The ServerMessage envelope narrowed to one kind: its message_type and payload shape."""
    properties: dict[str, Any] = {
        "message_type": {"const": kind.message_type.value},
        "payload": {"$ref": REF.format(model=kind.payload.__name__)},
    }
    required = ["message_id", "message_type", "payload", "timestamp"]
    if kind.data:
        properties["stream"] = {"type": "string", "description": "The stream: `market_data:AAPL`, `alerts`, ..."}
        properties["seq"] = {"type": "integer", "minimum": 1, "description": "Position in the stream, from 1"}
        properties["source"] = {"type": "string", "description": "The upstream EventBridge source"}
        required += ["stream", "seq"]
    if kind.room:
        properties["room"] = {"type": "string"}
        required.append("room")
    return {
        "title": _envelope_name(kind),
        "description": kind.summary,
        "allOf": [{"$ref": REF.format(model="ServerMessage")}, {"type": "object", "properties": properties}],
        "required": required,
    }


def _batch_schema(data_kinds: list[ServerKind]) -> dict[str, Any]:
    return {
        "title": "BatchMessage",
        "description": "Several messages for one connection in one frame (at most 128 KB), in delivery order.",
        "allOf": [
            {"$ref": REF.format(model="ServerMessage")},
            {
                "type": "object",
                "properties": {
                    "message_type": {"const": MessageType.BATCH.value},
                    "payload": {
                        "type": "object",
                        "properties": {
                            "messages": {
                                "type": "array",
                                "minItems": 2,
                                "items": {
                                    "anyOf": [{"$ref": REF.format(model=_envelope_name(kind))} for kind in data_kinds]
                                },
                            }
                        },
                        "required": ["messages"],
                        "additionalProperties": False,
                    },
                },
            },
        ],
        "required": ["message_id", "message_type", "payload", "timestamp"],
    }


def _example(kind: ServerKind, seq: int = 42) -> dict[str, Any]:
    if kind.data:
        # The payload the fan-out sends for this event (data_payload, as fanout._renderer builds it).
        detail = ServerKind.data_types[kind.message_type].model_validate(DATA_EXAMPLES[kind.message_type])
        payload: Any = data_payload(kind.message_type, detail, _hex(f"event-{kind.key}-{seq}"))
        extra: dict[str, Any] = {"stream": detail.stream, "seq": seq, "source": _source_of(kind.message_type)}
    else:
        # Validated by the payload model, so an example cannot show a field the protocol lacks.
        payload = kind.payload.model_validate(REPLY_EXAMPLES[kind.key]).model_dump(mode="json", exclude_none=True)
        extra = {"room": "desk.equities"} if kind.room else {}
        if kind.reply and kind.key not in {"memberJoined", "memberLeft"}:
            extra["request_id"] = "r1"
        if kind.key in {"roomMessage", "memberJoined", "memberLeft"}:
            extra["source"] = payload["member_id"]
    message = ServerMessage(
        message_id=_hex(f"{kind.key}-{seq}"),
        message_type=kind.message_type,
        payload=payload,
        timestamp=EXAMPLE_TIME,
        **extra,
    )
    return message.model_dump(mode="json", exclude_none=True)


def _batch_example(kinds: list[ServerKind]) -> dict[str, Any]:
    inner = [_example(kinds[0], seq) for seq in (42, 43)]
    return ServerMessage(
        message_id=_hex("batch"),
        message_type=MessageType.BATCH,
        payload={"messages": inner},
        timestamp=EXAMPLE_TIME,
    ).model_dump(mode="json", exclude_none=True)


def _hex(seed: str) -> str:
    """A stable stand-in for the uuid4 hex ids the server generates, so the document is reproducible."""
    return hashlib.sha256(seed.encode()).hexdigest()[:32]


def _source_of(message_type: MessageType) -> str:
    detail = ServerKind.data_types[message_type]
    return next(s.source for s in topology.SOURCES if s.stream_type == detail.stream_type.value)


def _version() -> str:
    return str(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"])


def _description() -> str:
    rows = "\n".join(f"| `{code.value}` | {meaning} |" for code, meaning in ERROR_MEANINGS.items())
    return f"""Real-time trading data (market ticks, predictions, alerts, performance, market regime, system status)
and chat rooms over one WebSocket connection, served by API Gateway's managed WebSocket API.

Generated by `scripts/generate_asyncapi.py` from the pydantic models the Lambda handlers validate with;
do not edit by hand. `docs/PROTOCOL.md` walks through a session.

## Connection

Connect to `wss://<host>/<stage>?token=<JWT>`, send `hello`, keep the `session_token` from `connect`.
Every client frame is a JSON object with an `action` and an optional `request_id` (at most 128 characters);
the answer to a frame, or its `error`, carries the same `request_id`.

API Gateway closes a connection after 10 minutes without a client frame (send `ping` every few minutes;
WebSocket ping frames do not count) and after 2 hours in any case. Reconnect with exponential backoff and
jitter, then `resume` with the session token and the last `seq` of every stream to get what was missed.

## Data messages

Each data message carries `stream` and `seq`. Several messages for one connection may arrive as one
`batch` message whose `payload.messages` holds them in order.

## Error codes

| code | meaning |
| --- | --- |
{rows}
"""


# ---------------------------------------------------------------- output


class _Dumper(yaml.SafeDumper):
    """Block style for multi-line text, so the descriptions read as Markdown in the file."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def render() -> str:
    header = "# Generated by scripts/generate_asyncapi.py from quanttrade_ws.protocol and quanttrade_ws.upstream.\n"
    header += "# Do not edit: run `make asyncapi` (tests/unit/test_asyncapi.py fails when this file drifts).\n"
    body = yaml.dump(build(), Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=120)
    return header + body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help=f"exit 1 if {OUTPUT.relative_to(ROOT)} is not current")
    parser.add_argument("--output", type=Path, help="write here instead of standard output")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = OUTPUT.read_text() if OUTPUT.exists() else ""
        if current == text:
            return 0
        diff = difflib.unified_diff(current.splitlines(True), text.splitlines(True), str(OUTPUT), "generated", n=1)
        sys.stderr.writelines(list(diff)[:80])
        sys.stderr.write("\ndocs/asyncapi.yaml is out of date: run `make asyncapi`\n")
        return 1
    if args.output:
        args.output.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
