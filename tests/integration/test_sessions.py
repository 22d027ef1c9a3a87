"""Sessions: access-token expiry on every action, refresh, and resume onto a new connection."""

from __future__ import annotations

import base64
import json
import threading
import time
from typing import Any

import pytest

from quanttrade_ws.auth import Session, SessionTokens
from tests.conftest import Wired
from tests.integration.conftest import connection_of, received

# The shared fixture's test secret is shorter than PyJWT recommends; irrelevant here.
pytestmark = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")

ACTIONS: list[dict[str, Any]] = [
    {"action": "hello"},
    {"action": "ping"},
    {"action": "subscribe", "streams": [{"stream_type": "alerts"}]},
    {"action": "unsubscribe", "streams": [{"stream_type": "alerts"}]},
    {"action": "joinRoom", "room": "lobby"},
    {"action": "leaveRoom", "room": "lobby"},
    {"action": "sendRoomMessage", "room": "lobby", "message": "hi"},
    {"action": "resume", "session_token": "x.y"},
]


def assert_auth_failed(message: dict[str, Any]) -> None:
    assert message["message_type"] == "error", message
    assert message["payload"]["error_code"] == "AUTH_FAILED"
    assert message["payload"]["message"]


@pytest.fixture
def real_time(wired: Wired) -> Wired:
    """Access tokens are verified against the real clock: run the service's clock from there."""
    wired.clock.now = time.time()
    return wired


def hello(wired: Wired, connection_id: str) -> str:
    return wired.send(connection_id, {"action": "hello"})["payload"]["session_token"]


def resume(wired: Wired, connection_id: str, token: str, **extra: Any) -> dict[str, Any]:
    return wired.send(connection_id, {"action": "resume", "session_token": token, "request_id": "rs", **extra})


# ---------------------------------------------------------------- expiry


@pytest.mark.parametrize("frame", ACTIONS, ids=[f["action"] for f in ACTIONS])
def test_expired_token_fails_every_action_and_closes(wired: Wired, frame: dict[str, Any]) -> None:
    # GIVEN a connection in a room whose access token has expired
    wired.connect("c1", expires_in=30)
    wired.send("c1", {"action": "joinRoom", "room": "lobby"})
    wired.clock.now += 31
    # WHEN it sends any action but refresh
    reply = wired.send("c1", {**frame, "request_id": "late"})
    # THEN AUTH_FAILED with its request id, the connection is closed, and nothing changed
    assert_auth_failed(reply)
    assert reply["request_id"] == "late"
    assert wired.gateway.closed == ["c1"]
    assert wired.store.subscriptions_of("c1") == []
    assert wired.store.rooms_of("c1") == ["lobby"]


def test_token_valid_until_its_expiry(wired: Wired) -> None:
    wired.connect("c1", expires_in=30)
    wired.clock.now += 29
    assert wired.send("c1", {"action": "ping"})["message_type"] == "pong"
    assert wired.gateway.closed == []


# ---------------------------------------------------------------- refresh


def test_refresh_after_expiry_extends_the_session(real_time: Wired) -> None:
    wired = real_time
    # GIVEN a connection whose token expired
    wired.connect("c1", expires_in=30)
    wired.clock.now += 60
    # WHEN it refreshes with a new token of the same user
    reply = wired.send("c1", {"action": "refresh", "token": wired.token(expires_in=3600), "request_id": "r"})
    # THEN it succeeds and actions work again
    assert reply["message_type"] == "refresh"
    assert reply["payload"]["success"] is True
    assert wired.gateway.closed == []
    assert wired.send("c1", {"action": "ping"})["message_type"] == "pong"
    assert connection_of(wired, "c1").identity.token_expires_at == reply["payload"]["expires_at"]


def test_refresh_before_expiry_extends_the_session(real_time: Wired) -> None:
    wired = real_time
    wired.connect("c1", expires_in=30)
    wired.send("c1", {"action": "refresh", "token": wired.token(expires_in=3600)})
    wired.clock.now += 600
    assert wired.send("c1", {"action": "ping"})["message_type"] == "pong"


def test_refresh_with_fewer_permissions_drops_what_it_no_longer_allows(real_time: Wired) -> None:
    wired = real_time
    # GIVEN a connection reading predictions and alerts, in a data room and a plain room
    wired.connect("c1", expires_in=30)
    wired.send("c1", {"action": "subscribe", "streams": [{"stream_type": "predictions"}, {"stream_type": "alerts"}]})
    wired.send("c1", {"action": "joinRoom", "room": "predictions_AAPL"})
    wired.send("c1", {"action": "joinRoom", "room": "desk"})
    # WHEN it refreshes with a token that may read alerts only
    token = wired.token(expires_in=3600, permissions=["read:alerts", "rooms:join"])
    reply = wired.send("c1", {"action": "refresh", "token": token})
    # THEN the predictions stream and room are gone, the rest stays, and the reply names what was dropped
    assert sorted(reply["payload"]["dropped"]) == ["predictions:*", "predictions_AAPL"]
    assert [s.stream_key for s in wired.store.subscriptions_of("c1")] == ["alerts:*"]
    assert wired.store.rooms_of("c1") == ["desk"]
    assert connection_of(wired, "c1").subscription_count == 1


def test_an_expired_session_sending_a_malformed_frame_is_closed(real_time: Wired) -> None:
    wired = real_time
    # GIVEN a connection whose token expired
    wired.connect("c1", expires_in=30)
    wired.clock.now += 60
    # WHEN it sends a frame that is not even JSON
    reply = wired.send("c1", "not json")
    # THEN it gets AUTH_FAILED and is closed, as for any other action
    assert_auth_failed(reply)
    assert wired.gateway.closed == ["c1"]


@pytest.mark.parametrize("token", ["not-a-jwt", "expired", "other-user"])
def test_a_failed_refresh_after_expiry_closes_the_connection(real_time: Wired, token: str) -> None:
    wired = real_time
    # GIVEN a subscribed connection whose token expired
    wired.connect("c1", expires_in=30)
    wired.send("c1", {"action": "subscribe", "streams": [{"stream_type": "alerts"}]})
    wired.clock.now += 60
    # WHEN it sends a refresh that fails
    tokens = {
        "not-a-jwt": "not-a-jwt",
        "expired": wired.token(expires_in=-60),
        "other-user": wired.token("mallory", expires_in=3600),
    }
    reply = wired.send("c1", {"action": "refresh", "token": tokens[token], "request_id": "r"})
    # THEN AUTH_FAILED with its request id, and the connection is closed: it cannot keep itself open with bad refreshes
    assert_auth_failed(reply)
    assert reply["request_id"] == "r"
    assert wired.gateway.closed == ["c1"]


def test_a_failed_refresh_before_expiry_keeps_the_connection(real_time: Wired) -> None:
    wired = real_time
    wired.connect("c1", expires_in=30)
    assert_auth_failed(wired.send("c1", {"action": "refresh", "token": "not-a-jwt"}))
    assert wired.gateway.closed == []


def test_refresh_with_another_users_token_fails(real_time: Wired) -> None:
    wired = real_time
    wired.connect("c1", user_id="alice", expires_in=30)
    # WHEN alice's connection presents mallory's valid token
    reply = wired.send("c1", {"action": "refresh", "token": wired.token("mallory", expires_in=3600)})
    # THEN AUTH_FAILED and the session is not extended
    assert_auth_failed(reply)
    wired.clock.now += 60
    assert_auth_failed(wired.send("c1", {"action": "ping"}))
    assert wired.gateway.closed == ["c1"]


def test_refresh_with_an_expired_token_fails(real_time: Wired) -> None:
    wired = real_time
    wired.connect("c1", expires_in=30)
    reply = wired.send("c1", {"action": "refresh", "token": wired.token(expires_in=-60)})
    assert_auth_failed(reply)
    assert "expired" in reply["payload"]["message"].lower()


def test_refresh_with_a_forged_token_fails(real_time: Wired) -> None:
    from local.tokens import mint_token

    wired = real_time
    wired.connect("c1", expires_in=30)
    forged = mint_token("not-the-service-secret-0123456789abcdef", "user-1", expires_in=3600)
    assert_auth_failed(wired.send("c1", {"action": "refresh", "token": forged}))


def test_refresh_takes_the_new_tokens_permissions_and_level(real_time: Wired) -> None:
    wired = real_time
    wired.connect("c1", level="premium")
    token = wired.token(permissions=["read:market_data"], subscription_level="free", expires_in=3600)
    assert wired.send("c1", {"action": "refresh", "token": token})["message_type"] == "refresh"
    identity = connection_of(wired, "c1").identity
    assert identity.permissions == frozenset({"read:market_data"})
    assert identity.subscription_level == "free"
    reply = wired.send("c1", {"action": "joinRoom", "room": "lobby"})
    assert reply["payload"]["error_code"] == "FORBIDDEN"


# ---------------------------------------------------------------- resume


def test_resume_reattaches_subscriptions_and_rooms_after_disconnect(wired: Wired) -> None:
    # GIVEN a connection with subscriptions and rooms, whose socket then dropped
    wired.connect("old")
    wired.connect("peer", user_id="user-2")
    token = hello(wired, "old")
    wired.send(
        "old",
        {
            "action": "subscribe",
            "streams": [
                {"stream_type": "market_data", "symbol": "AAPL", "filters": {"min_volume": "100"}, "latest_only": True},
                {"stream_type": "alerts", "interval": 2},
            ],
        },
    )
    wired.send("old", {"action": "joinRoom", "room": "desk"})
    wired.send("old", {"action": "joinRoom", "room": "lobby"})
    wired.send("peer", {"action": "joinRoom", "room": "desk"})
    wired.service.disconnect("old")
    assert wired.store.room_members("desk") == ["peer"]
    # WHEN the client reconnects and resumes with its session token
    wired.connect("new")
    reply = resume(wired, "new", token)
    # THEN its subscriptions (with their filters, intervals and conflation) and rooms are on the new connection
    assert reply["message_type"] == "resumed"
    assert reply["request_id"] == "rs"
    assert reply["payload"]["success"] is True
    assert sorted(reply["payload"]["subscriptions"]) == ["alerts:*", "market_data:AAPL"]
    assert sorted(reply["payload"]["rooms"]) == ["desk", "lobby"]
    [aapl] = wired.store.subscribers("market_data:AAPL")
    assert (aapl.connection_id, aapl.filters, aapl.latest_only) == ("new", {"min_volume": "100"}, True)
    [alerts] = wired.store.subscribers("alerts:*")
    assert (alerts.connection_id, alerts.interval, alerts.latest_only) == ("new", 2, False)
    assert sorted(wired.store.room_members("desk")) == ["new", "peer"]
    assert wired.store.rooms_of("new") == ["desk", "lobby"]
    connection = connection_of(wired, "new")
    assert (connection.room_count, connection.subscription_count) == (2, 2)
    # AND room messages reach it
    wired.send("peer", {"action": "sendRoomMessage", "room": "desk", "message": "welcome back"})
    assert received(wired, "new")[-1]["payload"]["message"] == "welcome back"


def test_resume_gives_a_fresh_session_token_that_resumes_again(wired: Wired) -> None:
    wired.connect("first")
    token = hello(wired, "first")
    wired.send("first", {"action": "joinRoom", "room": "desk"})
    wired.service.disconnect("first")
    wired.connect("second")
    second_token = resume(wired, "second", token)["payload"]["session_token"]
    # WHEN the second connection drops too and a third resumes with the newer token
    wired.service.disconnect("second")
    wired.connect("third")
    reply = resume(wired, "third", second_token)
    # THEN the session followed along
    assert reply["message_type"] == "resumed"
    assert wired.store.room_members("desk") == ["third"]


def test_resume_while_the_old_connection_is_still_open(wired: Wired) -> None:
    # GIVEN a client reconnecting before API Gateway's 2 hour cut-off, old socket still open
    wired.connect("old")
    token = hello(wired, "old")
    wired.send("old", {"action": "subscribe", "streams": [{"stream_type": "performance"}]})
    wired.connect("new")
    # THEN the new connection takes the live state
    reply = resume(wired, "new", token)
    assert reply["payload"]["subscriptions"] == ["performance:*"]
    assert {s.connection_id for s in wired.store.subscribers("performance:*")} >= {"new"}


def test_resume_with_an_expired_session_token_fails(wired: Wired) -> None:
    wired.connect("old")
    token = hello(wired, "old")
    wired.service.disconnect("old")
    # WHEN the client comes back after the session token's lifetime
    wired.clock.now += wired.settings.token_expiry_hours * 3600 + 1
    wired.connect("new", expires_in=3600)
    reply = resume(wired, "new", token)
    assert_auth_failed(reply)
    assert reply["request_id"] == "rs"
    assert wired.store.rooms_of("new") == []


def test_resume_with_a_forged_session_token_fails(wired: Wired) -> None:
    forged = SessionTokens("attacker-secret").issue(Session("sid", "user-1", int(wired.clock()) + 3600))
    wired.connect("new")
    assert_auth_failed(resume(wired, "new", forged))


def test_resume_with_a_tampered_session_token_fails(wired: Wired) -> None:
    # GIVEN a victim's session, and an attacker who edits its own token to name the victim's session id
    wired.connect("victim", user_id="victim")
    victim_token = hello(wired, "victim")
    victim_session = json.loads(base64.urlsafe_b64decode(victim_token.split(".")[1] + "=="))["sid"]
    wired.connect("attacker", user_id="attacker")
    attacker_token = hello(wired, "attacker")
    header, payload, signature = attacker_token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    body = base64.urlsafe_b64encode(json.dumps({**claims, "sid": victim_session}).encode())
    tampered = f"{header}.{body.rstrip(b'=').decode()}.{signature}"
    assert_auth_failed(resume(wired, "attacker", tampered))


def test_resume_with_another_users_session_token_fails(wired: Wired) -> None:
    # GIVEN alice's session with a room
    wired.connect("alice-1", user_id="alice")
    token = hello(wired, "alice-1")
    wired.send("alice-1", {"action": "joinRoom", "room": "alice-desk"})
    wired.service.disconnect("alice-1")
    # WHEN mallory presents alice's session token
    wired.connect("mallory-1", user_id="mallory")
    reply = resume(wired, "mallory-1", token)
    # THEN AUTH_FAILED and nothing of alice's is attached
    assert_auth_failed(reply)
    assert wired.store.rooms_of("mallory-1") == []
    # AND alice can still resume it herself
    wired.connect("alice-2", user_id="alice")
    assert resume(wired, "alice-2", token)["payload"]["rooms"] == ["alice-desk"]


def test_resume_with_an_access_token_fails(wired: Wired) -> None:
    wired.connect("c1")
    assert_auth_failed(resume(wired, "c1", wired.token()))


@pytest.mark.parametrize("token", ["garbage", "a.b", "\u00e9.\u00e9", "x.\u00ff"])
def test_resume_with_garbage_fails_as_auth_failed(wired: Wired, token: str) -> None:
    wired.connect("c1")
    assert_auth_failed(resume(wired, "c1", token))
    assert wired.gateway.closed == []


def test_resume_of_a_forgotten_session_fails(wired: Wired) -> None:
    # GIVEN a well-signed token for a session the store no longer holds
    token = wired.service.session_tokens.issue(Session("unknown-session", "user-1", int(wired.clock()) + 3600))
    wired.connect("c1")
    reply = resume(wired, "c1", token)
    assert_auth_failed(reply)


def test_resume_reattaches_only_what_the_new_token_permits(wired: Wired) -> None:
    # GIVEN a session holding alerts and predictions subscriptions and a data room
    wired.connect("old")
    token = hello(wired, "old")
    wired.send("old", {"action": "subscribe", "streams": [{"stream_type": "alerts"}, {"stream_type": "predictions"}]})
    wired.send("old", {"action": "joinRoom", "room": "predictions_AAPL"})
    wired.send("old", {"action": "joinRoom", "room": "lobby"})
    wired.service.disconnect("old")
    # WHEN the client comes back with a token that no longer reads predictions
    wired.connect("new", permissions=("read:alerts", "rooms:join"))
    reply = resume(wired, "new", token)
    # THEN only the permitted subscription and rooms come back, and the reply says so
    assert [s.stream_key for s in wired.store.subscriptions_of("new")] == ["alerts:*"]
    assert wired.store.rooms_of("new") == ["lobby"]
    assert reply["payload"]["rooms"] == ["lobby"]
    assert reply["payload"]["subscriptions"] == ["alerts:*"]
    assert sorted(reply["payload"]["dropped"]) == ["predictions:*", "predictions_AAPL"]


def test_resume_without_rooms_join_restores_no_room(wired: Wired) -> None:
    # GIVEN a session in a chat room and a data room, with a subscription
    wired.connect("old")
    wired.connect("peer", user_id="user-2")
    token = hello(wired, "old")
    wired.send("old", {"action": "subscribe", "streams": [{"stream_type": "alerts"}]})
    wired.send("old", {"action": "joinRoom", "room": "desk"})
    wired.send("old", {"action": "joinRoom", "room": "alerts"})
    wired.send("peer", {"action": "joinRoom", "room": "desk"})
    wired.service.disconnect("old")
    # WHEN the client comes back with a token that may read alerts but no longer join rooms
    wired.connect("new", permissions=("read:alerts",))
    assert error_code_of(wired.send("new", {"action": "joinRoom", "room": "desk"})) == "FORBIDDEN"
    reply = resume(wired, "new", token)
    # THEN resume restores the subscription but no room (joinRoom would refuse both), and says which it dropped
    assert reply["payload"]["subscriptions"] == ["alerts:*"]
    assert reply["payload"]["rooms"] == []
    assert sorted(reply["payload"]["dropped"]) == ["alerts", "desk"]
    assert wired.store.rooms_of("new") == []
    # AND it does not read the room
    wired.send("peer", {"action": "sendRoomMessage", "room": "desk", "message": "private"})
    assert all(m["message_type"] != "room_message" for m in received(wired, "new"))


def error_code_of(message: dict[str, Any]) -> str | None:
    return message["payload"].get("error_code") if message["message_type"] == "error" else None


# ---------------------------------------------------------------- refresh: downgrades stick


def symbols(*names: str) -> dict[str, Any]:
    return {"action": "subscribe", "streams": [{"stream_type": "market_data", "symbol": n} for n in names]}


def test_a_downgrade_through_refresh_trims_the_subscriptions_over_the_new_limit(real_time: Wired) -> None:
    wired = real_time
    # GIVEN a premium connection with 8 subscriptions
    wired.connect("c1", level="premium")
    assert wired.send("c1", symbols("A", "B", "C", "D", "E", "F", "G", "H"))["message_type"] == "subscribe"
    # WHEN it refreshes with a free token (limit 5)
    reply = wired.send("c1", {"action": "refresh", "token": wired.token(subscription_level="free"), "request_id": "r"})
    # THEN the last three in key order are dropped, and the reply names them
    assert reply["message_type"] == "refresh", reply
    assert reply["payload"]["dropped"] == ["market_data:H", "market_data:G", "market_data:F"]
    remaining = [s.stream_key for s in wired.store.subscriptions_of("c1")]
    assert remaining == [f"market_data:{s}" for s in "ABCDE"]
    assert connection_of(wired, "c1").subscription_count == 5
    assert connection_of(wired, "c1").identity.subscription_level == "free"
    # AND the free limit holds from now on
    assert wired.send("c1", symbols("Z"))["payload"]["error_code"] == "SUBSCRIPTION_LIMIT"


def test_an_upgrade_or_a_same_level_refresh_drops_nothing(real_time: Wired) -> None:
    wired = real_time
    wired.connect("c1", level="free")
    wired.send("c1", symbols("A", "B", "C", "D", "E"))
    reply = wired.send("c1", {"action": "refresh", "token": wired.token(subscription_level="free")})
    assert reply["payload"]["dropped"] == []
    assert connection_of(wired, "c1").subscription_count == 5


def test_a_downgrade_trims_by_what_each_subscription_costs_and_the_counter_stays_true(real_time: Wired) -> None:
    wired = real_time
    # GIVEN a premium connection holding 14 units: a wildcard over market data (10), three single
    # subscriptions (1 each) and a data room (1)
    wired.connect("c1", level="premium")
    streams = [
        {"stream_type": "alerts"},
        {"stream_type": "market_data"},
        {"stream_type": "predictions", "symbol": "AAPL"},
        {"stream_type": "predictions", "symbol": "MSFT"},
    ]
    assert wired.send("c1", {"action": "subscribe", "streams": streams})["message_type"] == "subscribe"
    wired.clock.advance(1)  # a new rate-budget second: the budget is not what this tests
    assert wired.send("c1", {"action": "joinRoom", "room": "alerts"})["message_type"] == "join_room"
    assert connection_of(wired, "c1").subscription_count == 14
    # WHEN it refreshes with a free token (limit 5)
    reply = wired.send("c1", {"action": "refresh", "token": wired.token(subscription_level="free")})
    # THEN subscriptions go, last in key order first, until what is left fits: the wildcard gives back 10
    assert reply["payload"]["dropped"] == ["predictions:MSFT", "predictions:AAPL", "market_data:*"]
    assert [s.stream_key for s in wired.store.subscriptions_of("c1")] == ["alerts:*"]
    assert wired.store.rooms_of("c1") == ["alerts"]
    # AND the counter equals what is held: one subscription and one data room
    assert connection_of(wired, "c1").subscription_count == 2


def test_refresh_with_a_token_older_than_the_current_one_is_refused(real_time: Wired) -> None:
    wired = real_time
    now = int(time.time())
    # GIVEN a premium connection that was downgraded to free by a token issued now
    wired.connect("c1", level="premium", issued_at=now - 600)
    premium = wired.token(subscription_level="premium", issued_at=now - 600)
    downgrade = wired.token(subscription_level="free", issued_at=now)
    assert wired.send("c1", {"action": "refresh", "token": downgrade})["message_type"] == "refresh"
    # WHEN it refreshes with the older, broader token
    reply = wired.send("c1", {"action": "refresh", "token": premium, "request_id": "old"})
    # THEN AUTH_FAILED, and the downgrade stands
    assert_auth_failed(reply)
    assert reply["request_id"] == "old"
    assert connection_of(wired, "c1").identity.subscription_level == "free"
    assert connection_of(wired, "c1").identity.token_issued_at == now
    # AND a token as new as the current one, or newer, is accepted
    assert wired.send("c1", {"action": "refresh", "token": downgrade})["message_type"] == "refresh"
    newer = wired.token(subscription_level="basic", issued_at=now + 1)
    assert wired.send("c1", {"action": "refresh", "token": newer})["message_type"] == "refresh"
    assert connection_of(wired, "c1").identity.subscription_level == "basic"


def test_the_connect_tokens_iat_is_the_starting_point(real_time: Wired) -> None:
    wired = real_time
    now = int(time.time())
    wired.connect("c1", issued_at=now)
    reply = wired.send("c1", {"action": "refresh", "token": wired.token(issued_at=now - 1)})
    assert_auth_failed(reply)


# ---------------------------------------------------------------- session tokens are single-use


def test_a_spent_session_token_is_refused(wired: Wired) -> None:
    # GIVEN a session resumed once on a second connection
    wired.connect("first")
    token = hello(wired, "first")
    wired.send("first", {"action": "joinRoom", "room": "desk"})
    wired.service.disconnect("first")
    wired.connect("second")
    assert resume(wired, "second", token)["message_type"] == "resumed"
    # WHEN the same token is presented again, on another connection or on the same one
    wired.connect("third")
    again = resume(wired, "third", token)
    same = resume(wired, "second", token)
    # THEN both get AUTH_FAILED, and the session stays where it is
    assert_auth_failed(again)
    assert_auth_failed(same)
    assert "already used" in again["payload"]["message"]
    assert wired.store.room_members("desk") == ["second"]
    assert wired.store.rooms_of("third") == []


def test_a_resume_that_failed_after_spending_its_token_can_be_retried_by_its_connection_only(
    wired: Wired, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a session in a room, and a resume on a new connection that fails (INTERNAL) after spending the token
    wired.connect("first")
    token = hello(wired, "first")
    wired.send("first", {"action": "joinRoom", "room": "desk"})
    wired.service.disconnect("first")
    wired.connect("second")
    set_session = wired.store.set_session
    failures = iter([RuntimeError("DynamoDB went away")])

    def fail_once(*args: Any, **kwargs: Any) -> Any:
        error = next(failures, None)
        if error is not None:
            raise error
        return set_session(*args, **kwargs)

    monkeypatch.setattr(wired.store, "set_session", fail_once)
    failed = resume(wired, "second", token)
    assert failed["payload"]["error_code"] == "INTERNAL", failed
    # WHEN the client retries on the same connection (a second later: a resume weighs half the rate budget)
    wired.clock.advance(1.0)
    retried = resume(wired, "second", token)
    # THEN it resumes, back in its room
    assert retried["message_type"] == "resumed", retried
    assert wired.store.rooms_of("second") == ["desk"]
    # AND once answered, the token is spent for good: not again on this connection, nor on another
    wired.clock.advance(1.0)
    assert_auth_failed(resume(wired, "second", token))
    wired.connect("third")
    assert_auth_failed(resume(wired, "third", token))


def test_the_hello_token_and_each_resumed_token_are_distinct_and_single_use(wired: Wired) -> None:
    wired.connect("c0")
    tokens = [hello(wired, "c0")]
    for n in range(1, 4):
        wired.service.disconnect(f"c{n - 1}")
        wired.connect(f"c{n}")
        reply = resume(wired, f"c{n}", tokens[-1])
        assert reply["message_type"] == "resumed", reply
        tokens.append(reply["payload"]["session_token"])
    assert len(set(tokens)) == len(tokens)
    ids = {wired.service.session_tokens.verify(t).token_id for t in tokens}
    assert len(ids) == len(tokens)


class SerialisedDynamoDB:
    """DynamoDB applies each conditional write atomically; in-process moto takes no lock, so calls are serialised."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                return attribute(*args, **kwargs)

        return call


def test_of_two_concurrent_resumes_with_one_token_exactly_one_wins(
    settings: Any, aws: dict[str, Any], wired: Wired
) -> None:
    # GIVEN a session with a room, and two new connections holding its token
    racing = Wired(settings, SerialisedDynamoDB(aws["dynamodb"]), wired.clock)
    racing.connect("first")
    token = hello(racing, "first")
    racing.send("first", {"action": "joinRoom", "room": "desk"})
    racing.service.disconnect("first")
    racing.connect("a")
    racing.connect("b")
    # ... both past the token's verification before either spends it
    barrier = threading.Barrier(2, timeout=10)
    spend = racing.store.spend_session_token

    def spend_together(*args: Any) -> bool:
        barrier.wait()
        return spend(*args)

    racing.store.spend_session_token = spend_together  # type: ignore[method-assign,assignment]
    # WHEN both resume at once
    replies: dict[str, dict[str, Any]] = {}
    threads = [threading.Thread(target=lambda c=c: replies.update({c: resume(racing, c, token)})) for c in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    # THEN exactly one is resumed and the other refused, and the room holds only the winner
    kinds = sorted(reply["message_type"] for reply in replies.values())
    assert kinds == ["error", "resumed"], replies
    [winner] = [c for c, reply in replies.items() if reply["message_type"] == "resumed"]
    [loser] = [c for c, reply in replies.items() if reply["message_type"] == "error"]
    assert_auth_failed(replies[loser])
    assert racing.store.room_members("desk") == [winner]
