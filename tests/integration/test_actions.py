"""Every client action and every error code, through RealtimeService.handle_frame on moto DynamoDB."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest

from quanttrade_ws.config import Limits, Settings
from quanttrade_ws.protocol import ACTION_COSTS, ErrorCode
from tests.conftest import Clock, Wired
from tests.integration.conftest import connection_of, received
from tests.provision import provision

# The shared fixture's test secret is shorter than PyJWT recommends; irrelevant here.
pytestmark = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")

ISO_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
ENVELOPE = {"message_id", "message_type", "payload", "timestamp", "source", "target", "room", "request_id"}
ENVELOPE |= {"stream", "seq"}


def assert_error(message: dict[str, Any], code: str, request_id: str | None = None) -> None:
    assert message["message_type"] == "error", message
    assert message["payload"]["error_code"] == code
    assert isinstance(message["payload"]["message"], str) and message["payload"]["message"]
    assert "Traceback" not in message["payload"]["message"]
    if request_id is not None:
        assert message["request_id"] == request_id


def with_limits(settings: Settings, aws: dict[str, Any], **limits: Any) -> Wired:
    settings = settings.model_copy(update={"limits": Limits(**limits)})
    provision(aws["dynamodb"], aws["sqs"], aws["events"], settings)
    return Wired(settings, aws["dynamodb"], Clock())


# ---------------------------------------------------------------- every action


def test_hello_returns_connect_with_client_id_session_token_and_limits(wired: Wired) -> None:
    wired.connect("c1", level="basic")
    reply = wired.send("c1", {"action": "hello", "request_id": "h1"})
    assert reply["message_type"] == "connect"
    assert reply["request_id"] == "h1"
    assert reply["target"] == "c1"
    payload = reply["payload"]
    assert payload["client_id"] == "c1"
    assert isinstance(payload["session_token"], str) and payload["session_token"]
    limits = payload["limits"]
    assert limits["max_subscriptions"] == 20
    assert limits["max_rooms"] == 10
    assert limits["max_room_members"] == 1000
    assert limits["max_room_message_bytes"] == 4096
    assert limits["messages_per_second"] == 100


def test_hello_twice_keeps_the_same_session(wired: Wired) -> None:
    wired.connect("c1")
    first = wired.send("c1", {"action": "hello"})["payload"]["session_token"]
    second = wired.send("c1", {"action": "hello"})["payload"]["session_token"]
    tokens = wired.service.session_tokens
    assert tokens.verify(first).session_id == tokens.verify(second).session_id


def test_ping_returns_pong(wired: Wired) -> None:
    wired.connect("c1")
    reply = wired.send("c1", {"action": "ping", "request_id": "p"})
    assert reply["message_type"] == "pong"
    assert reply["request_id"] == "p"


def test_subscribe_and_unsubscribe(wired: Wired) -> None:
    wired.connect("c1")
    reply = wired.send("c1", {"action": "subscribe", "streams": [{"stream_type": "market_regime"}], "request_id": "s"})
    assert (reply["message_type"], reply["payload"]["success"], reply["request_id"]) == ("subscribe", True, "s")
    assert reply["payload"]["message"]
    reply = wired.send(
        "c1", {"action": "unsubscribe", "streams": [{"stream_type": "market_regime"}], "request_id": "u"}
    )
    assert (reply["message_type"], reply["payload"]["success"], reply["request_id"]) == ("unsubscribe", True, "u")


def test_join_send_and_leave(wired: Wired) -> None:
    wired.connect("c1")
    wired.connect("c2", user_id="user-2")
    mine = wired.send("c1", {"action": "joinRoom", "room": "desk"})["payload"]["member_id"]
    theirs = wired.send("c2", {"action": "joinRoom", "room": "desk"})["payload"]["member_id"]
    assert received(wired, "c1")[-1]["payload"] == {"member_id": theirs}
    echo = wired.send("c1", {"action": "sendRoomMessage", "room": "desk", "message": "hello desk"})
    assert (echo["message_type"], echo["source"], echo["room"]) == ("room_message", mine, "desk")
    assert received(wired, "c2")[-1]["payload"]["message"] == "hello desk"
    assert wired.send("c2", {"action": "leaveRoom", "room": "desk"})["message_type"] == "leave_room"
    assert received(wired, "c1")[-1]["message_type"] == "leave_room"


def test_refresh_extends_the_session(wired: Wired) -> None:
    wired.clock.now = time.time()  # access tokens are verified against the real clock
    wired.connect("c1", expires_in=60)
    reply = wired.send("c1", {"action": "refresh", "token": wired.token(expires_in=7200), "request_id": "r"})
    assert reply["message_type"] == "refresh"
    assert reply["request_id"] == "r"
    assert reply["payload"]["success"] is True
    assert reply["payload"]["expires_at"] > wired.clock() + 3600
    assert connection_of(wired, "c1").identity.token_expires_at == reply["payload"]["expires_at"]


def test_resume_returns_resumed(wired: Wired) -> None:
    wired.connect("old")
    token = wired.send("old", {"action": "hello"})["payload"]["session_token"]
    wired.service.disconnect("old")
    wired.connect("new")
    reply = wired.send("new", {"action": "resume", "session_token": token, "request_id": "rs"})
    assert reply["message_type"] == "resumed"
    assert reply["request_id"] == "rs"
    assert reply["payload"]["client_id"] == "new"


# ---------------------------------------------------------------- the envelope


def test_server_messages_are_well_formed(wired: Wired) -> None:
    wired.connect("c1")
    for frame in (
        {"action": "hello"},
        {"action": "ping"},
        {"action": "joinRoom", "room": "x"},
        {"action": "sendRoomMessage", "room": "x", "message": "m"},
        {"action": "nope"},
        "not json",
    ):
        wired.send("c1", frame)
    messages = received(wired, "c1")
    assert len(messages) == 6
    for message in messages:
        assert set(message) <= ENVELOPE
        assert {"message_id", "message_type", "payload", "timestamp"} <= set(message)
        assert ISO_UTC.match(message["timestamp"]), message["timestamp"]
        assert message["target"] == "c1"
    assert len({m["message_id"] for m in messages}) == len(messages)


# ---------------------------------------------------------------- every error code


def test_invalid_message_keeps_the_connection_open(wired: Wired) -> None:
    wired.connect("c1")
    for body in ("{oops", "[1, 2]", '{"no_action": 1}', '{"action": "ping", "extra": true}', b"\xff\xfe", ""):
        wired.service.handle_frame("c1", body)
        assert_error(received(wired, "c1")[-1], "INVALID_MESSAGE")
    assert wired.gateway.closed == []
    assert wired.send("c1", {"action": "ping"})["message_type"] == "pong"


def test_invalid_message_echoes_request_id(wired: Wired) -> None:
    wired.connect("c1")
    assert_error(wired.send("c1", {"action": "joinRoom", "room": 7, "request_id": "bad"}), "INVALID_MESSAGE", "bad")


def test_unknown_action(wired: Wired) -> None:
    wired.connect("c1")
    assert_error(wired.send("c1", {"action": "launchRocket", "request_id": "u1"}), "UNKNOWN_ACTION", "u1")
    assert wired.gateway.closed == []


def test_auth_failed_after_the_token_expires_and_the_connection_is_closed(wired: Wired) -> None:
    # GIVEN a connection whose access token expires in a minute
    wired.connect("c1", expires_in=60)
    wired.send("c1", {"action": "subscribe", "streams": [{"stream_type": "alerts"}]})
    # WHEN it sends a frame after expiry
    wired.clock.now += 61
    reply = wired.send("c1", {"action": "joinRoom", "room": "lobby", "request_id": "late"})
    # THEN AUTH_FAILED, the gateway closes it, and the action was not carried out
    assert_error(reply, "AUTH_FAILED", "late")
    assert wired.gateway.closed == ["c1"]
    assert wired.store.room_members("lobby") == []


def test_auth_failed_when_refreshing_with_another_users_token(wired: Wired) -> None:
    wired.clock.now = time.time()
    wired.connect("c1", user_id="alice", expires_in=600)
    reply = wired.send("c1", {"action": "refresh", "token": wired.token("mallory", expires_in=7200), "request_id": "r"})
    assert_error(reply, "AUTH_FAILED", "r")
    assert connection_of(wired, "c1").identity.user_id == "alice"
    assert connection_of(wired, "c1").identity.token_expires_at == int(wired.clock()) + 600


def test_auth_failed_when_refreshing_with_an_invalid_token(wired: Wired) -> None:
    wired.connect("c1")
    assert_error(wired.send("c1", {"action": "refresh", "token": "not.a.jwt"}), "AUTH_FAILED")
    assert wired.gateway.closed == []


def test_rate_limit_then_close_after_repeated_warnings(wired: Wired) -> None:
    # GIVEN time held still inside one second
    limits = wired.settings.limits
    assert (limits.messages_per_second, limits.rate_limit_warnings) == (100, 3)
    wired.connect("c1")
    # WHEN 100 frames arrive in that second, THEN all are answered normally
    for i in range(limits.messages_per_second):
        wired.service.handle_frame("c1", json.dumps({"action": "ping", "request_id": str(i)}))
    assert [m["message_type"] for m in received(wired, "c1")] == ["pong"] * 100
    # WHEN the 101st arrives, THEN RATE_LIMIT, and the frame is not acted on
    assert_error(wired.send("c1", {"action": "joinRoom", "room": "lobby"}), "RATE_LIMIT")
    assert wired.store.room_members("lobby") == []
    assert wired.gateway.closed == []
    # AND after the allowed number of warnings, the next excess frame closes the connection
    for _ in range(limits.rate_limit_warnings - 1):
        assert_error(wired.send("c1", {"action": "ping"}), "RATE_LIMIT")
    assert wired.gateway.closed == []
    wired.service.handle_frame("c1", '{"action": "ping"}')
    assert wired.gateway.closed == ["c1"]


def test_the_rate_limit_weighs_each_action_by_its_cost(wired: Wired) -> None:
    # GIVEN time held still inside one second, and the cost table
    budget = wired.settings.limits.messages_per_second
    assert all(ACTION_COSTS[action] > ACTION_COSTS["ping"] for action in EXPENSIVE_ACTIONS)
    wired.connect("c1")
    # WHEN joins spend the whole budget (far fewer frames than the budget in pings)
    joins = budget // ACTION_COSTS["joinRoom"]
    for i in range(joins):
        assert wired.send("c1", {"action": "joinRoom", "room": f"r{i % 5}"})["message_type"] == "join_room"
    # THEN even a ping is over it, and the connection is told so
    assert_error(wired.send("c1", {"action": "ping"}), "RATE_LIMIT")
    # AND the limits tell the client what each action costs
    wired.clock.now += 1
    assert wired.send("c1", {"action": "hello"})["payload"]["limits"]["action_costs"] == ACTION_COSTS


EXPENSIVE_ACTIONS = ("subscribe", "unsubscribe", "resume", "joinRoom", "leaveRoom", "sendRoomMessage")


def test_rate_window_resets_the_next_second(wired: Wired) -> None:
    wired.connect("c1")
    for _ in range(101):
        wired.service.handle_frame("c1", '{"action": "ping"}')
    assert_error(received(wired, "c1")[-1], "RATE_LIMIT")
    wired.clock.now += 1
    assert wired.send("c1", {"action": "ping"})["message_type"] == "pong"


def test_rate_window_counts_arrivals_not_processing_time(wired: Wired) -> None:
    # GIVEN 101 frames that API Gateway took within one second, processed while the clock runs on
    wired.connect("c1")
    arrived = wired.clock.now
    for _ in range(101):
        wired.service.handle_frame("c1", '{"action": "ping"}', received_at=arrived)
        wired.clock.now += 0.05  # a backlog: each invocation starts later than the one before
    # THEN the flood is still limited: the window is the arrival second
    assert_error(received(wired, "c1")[-1], "RATE_LIMIT")


def test_frames_processed_after_a_later_ones_window_still_count(wired: Wired) -> None:
    # GIVEN a frame of this second already counted, then a flood from the second before whose
    # invocations queued past it (late, not lost)
    wired.connect("c1")
    now = wired.clock.now
    wired.service.handle_frame("c1", '{"action": "ping"}', received_at=now)
    for _ in range(100):
        wired.service.handle_frame("c1", '{"action": "ping"}', received_at=now - 1)
    # THEN the late frames count in the window that is open: the flood is limited, not free
    assert_error(received(wired, "c1")[-1], "RATE_LIMIT")
    # AND the connection's activity stays the newest frame's
    connection = wired.store.get_connection("c1")
    assert connection is not None and connection.last_activity == int(now)


def test_rate_limit_is_per_connection(wired: Wired) -> None:
    wired.connect("busy")
    wired.connect("calm")
    for _ in range(101):
        wired.service.handle_frame("busy", '{"action": "ping"}')
    assert_error(received(wired, "busy")[-1], "RATE_LIMIT")
    assert wired.send("calm", {"action": "ping"})["message_type"] == "pong"


def test_subscription_limit(wired: Wired) -> None:
    wired.connect("c1", level="free")
    wired.send("c1", {"action": "subscribe", "streams": [{"stream_type": t} for t in ("alerts", "performance")]})
    streams = [{"stream_type": "market_data", "symbol": s} for s in ("A", "B", "C", "D")]
    assert_error(wired.send("c1", {"action": "subscribe", "streams": streams, "request_id": "s"}), "SUBSCRIPTION_LIMIT")


def test_room_limit(settings: Settings, aws: dict[str, Any]) -> None:
    wired = with_limits(settings, aws, rooms_per_client=2)
    wired.connect("c1")
    wired.send("c1", {"action": "joinRoom", "room": "r1"})
    wired.send("c1", {"action": "joinRoom", "room": "r2"})
    assert_error(wired.send("c1", {"action": "joinRoom", "room": "r3", "request_id": "q"}), "ROOM_LIMIT", "q")


def test_room_full(settings: Settings, aws: dict[str, Any]) -> None:
    wired = with_limits(settings, aws, clients_per_room=1)
    wired.connect("c1")
    wired.connect("c2", user_id="user-2")  # a second user: one user's connections share one seat
    wired.send("c1", {"action": "joinRoom", "room": "solo"})
    assert_error(wired.send("c2", {"action": "joinRoom", "room": "solo", "request_id": "q"}), "ROOM_FULL", "q")


def test_invalid_room(wired: Wired) -> None:
    wired.connect("c1")
    assert_error(wired.send("c1", {"action": "joinRoom", "room": "no spaces please"}), "INVALID_ROOM")


def test_forbidden(wired: Wired) -> None:
    wired.connect("c1", permissions=("rooms:join",))
    assert_error(wired.send("c1", {"action": "subscribe", "streams": [{"stream_type": "predictions"}]}), "FORBIDDEN")
    assert_error(wired.send("c1", {"action": "joinRoom", "room": "admin.ops"}), "FORBIDDEN")


def test_not_in_room(wired: Wired) -> None:
    wired.connect("c1")
    assert_error(wired.send("c1", {"action": "sendRoomMessage", "room": "desk", "message": "x"}), "NOT_IN_ROOM")
    assert_error(wired.send("c1", {"action": "leaveRoom", "room": "desk"}), "NOT_IN_ROOM")


def test_message_too_large(wired: Wired) -> None:
    wired.connect("c1")
    wired.send("c1", {"action": "joinRoom", "room": "desk"})
    frame = {"action": "sendRoomMessage", "room": "desk", "message": "x" * 5000, "request_id": "big"}
    assert_error(wired.send("c1", frame), "MESSAGE_TOO_LARGE", "big")


class _StoreBroke(RuntimeError):
    pass


def test_internal_error_has_no_internals(wired: Wired, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN the data layer failing in a way no client could cause
    wired.connect("c1")

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise _StoreBroke("DynamoStore.join_room exploded: table quanttrade-rooms at /var/task/store.py line 42")

    monkeypatch.setattr(wired.store, "join_room", broken)
    # WHEN an action hits it
    reply = wired.send("c1", {"action": "joinRoom", "room": "lobby", "request_id": "i1"})
    # THEN INTERNAL in plain words, with the request id, and nothing about the internals
    assert_error(reply, "INTERNAL", "i1")
    text = json.dumps(reply)
    for leak in ("Traceback", "DynamoStore", "_StoreBroke", "quanttrade-rooms", "/var/task", "store.py", "exploded"):
        assert leak not in text
    # AND the connection stays open and usable
    assert wired.gateway.closed == []
    assert wired.send("c1", {"action": "ping"})["message_type"] == "pong"


def test_internal_error_from_botocore(wired: Wired, monkeypatch: pytest.MonkeyPatch) -> None:
    from botocore.exceptions import ClientError

    wired.connect("c1")

    def throttled(*args: Any, **kwargs: Any) -> Any:
        raise ClientError(
            {"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "arn:aws:dynamodb:secret"}},
            "TransactWriteItems",
        )

    monkeypatch.setattr(wired.store, "add_subscription", throttled)
    reply = wired.send("c1", {"action": "subscribe", "streams": [{"stream_type": "alerts"}]})
    assert_error(reply, "INTERNAL")
    assert "arn:aws" not in json.dumps(reply)
    assert "TransactWriteItems" not in json.dumps(reply)


def test_every_error_code_is_exercised_by_this_module() -> None:
    # A guard: a new error code needs a test here.
    import inspect
    import sys

    source = inspect.getsource(sys.modules[__name__])
    for code in ErrorCode:
        assert f'"{code.value}"' in source, code
