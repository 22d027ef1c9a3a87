"""The examples in the AsyncAPI document: each message as the server sends it, with stable ids."""

from __future__ import annotations

import hashlib
from typing import Any

from quanttrade_protocol.data import data_payload
from quanttrade_ws import protocol, topology
from quanttrade_ws.protocol import MessageType, ServerMessage
from scripts.asyncapi.catalog import ServerKind

EXAMPLE_TIME = "2026-01-05T14:30:00.125Z"

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


def message_example(kind: ServerKind, seq: int = 42) -> dict[str, Any]:
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


def batch_message_example(kinds: list[ServerKind]) -> dict[str, Any]:
    inner = [message_example(kinds[0], seq) for seq in (42, 43)]
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
