"""Stale rows: connections that vanished without $disconnect are swept with everything they own; live ones stay.

API Gateway calls $disconnect on a best-effort basis, so a connection can vanish
and leave its rows behind. RealtimeService.sweep (the scheduled sweeper) finds
connections idle past the idle timeout, asks the gateway about each, and removes
only those the gateway no longer knows. Every row a connection owns also carries
a TTL (`expires_at`) beyond API Gateway's 2 hour maximum, as the last resort.

moto DynamoDB with the tables of the real topology; the in-memory gateway stands
in for the Management API (`gone` marks a connection it no longer knows).
"""

from __future__ import annotations

import time
from typing import Any

import pytest

import handlers.sweeper
from quanttrade_ws import topology
from quanttrade_ws.config import Limits, Settings
from quanttrade_ws.connection_gateway import GatewayError
from quanttrade_ws.runtime import Runtime
from quanttrade_ws.store.rooms import ROOM_META
from tests.conftest import Clock, Wired
from tests.lambda_events import LambdaContext
from tests.provision import provision

# The shared fixture's test secret is shorter than PyJWT recommends; irrelevant here.
pytestmark = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")

TWO_HOURS = 2 * 3600
AAPL = {"stream_type": "market_data", "symbol": "AAPL"}
ALERTS = {"stream_type": "alerts"}


@pytest.fixture
def wired(settings: Settings, aws: dict[str, Any]) -> Wired:
    """The service on moto with its clock starting at the wall clock (rows written with time.time() agree with it)."""
    provision(aws["dynamodb"], aws["sqs"], aws["events"], settings)
    return Wired(settings, aws["dynamodb"], Clock(time.time()))


def items(wired: Wired, table: str) -> list[dict[str, Any]]:
    return list(wired.store._db.scan(TableName=table, ConsistentRead=True)["Items"])


def owned_by(wired: Wired, connection_id: str) -> dict[str, list[dict[str, Any]]]:
    """Every item in any table that names the connection (by key or by attribute)."""
    found: dict[str, list[dict[str, Any]]] = {}
    for table in topology.TABLES:
        name = getattr(wired.settings, table.env_var.lower())
        hits = [
            item
            for item in items(wired, name)
            if connection_id in (item.get("pk", {}).get("S"), item.get("connection_id", {}).get("S"))
            or item.get("member_id", {}).get("S") == connection_id
        ]
        if hits:
            found[name] = hits
    return found


def room_count(wired: Wired, room: str) -> int:
    item = wired.store._db.get_item(
        TableName=wired.settings.rooms_table, Key={"room": {"S": room}, "member_id": {"S": ROOM_META}}
    ).get("Item")
    return int(item["member_count"]["N"]) if item else 0


def subscribe(wired: Wired, connection_id: str, *streams: dict[str, Any]) -> None:
    reply = wired.send(connection_id, {"action": "subscribe", "streams": list(streams)})
    assert reply["message_type"] == "subscribe", reply


def join(wired: Wired, connection_id: str, room: str) -> dict[str, Any]:
    return wired.send(connection_id, {"action": "joinRoom", "room": room, "request_id": f"join-{room}"})


def vanish(wired: Wired, connection_id: str) -> None:
    """The client is gone and API Gateway forgot it, but $disconnect never ran."""
    wired.gateway.gone.add(connection_id)


def pass_idle_timeout(wired: Wired) -> None:
    wired.clock.advance(wired.settings.idle_timeout_seconds + 1)


# ---------------------------------------------------------------- what a sweep removes and keeps


def test_a_vanished_connection_is_removed_with_everything_it_owns_and_a_quiet_live_one_is_kept(wired: Wired) -> None:
    # GIVEN a connection with two subscriptions, in a room it shares and a room of its own, that vanished
    wired.connect("lost", user_id="ghost")
    subscribe(wired, "lost", AAPL, ALERTS)
    join(wired, "lost", "lobby")
    join(wired, "lost", "solo")
    # ... and a quiet but live connection with a subscription and a place in the shared room
    wired.connect("quiet", user_id="lurker")
    subscribe(wired, "quiet", AAPL)
    join(wired, "quiet", "lobby")
    vanish(wired, "lost")
    # ... both silent for longer than the idle timeout
    pass_idle_timeout(wired)
    assert room_count(wired, "lobby") == 2

    # WHEN the sweeper runs
    removed = wired.service.sweep()

    # THEN the vanished connection, its subscriptions, its memberships and its row are gone
    assert removed == 1
    assert wired.store.get_connection("lost") is None
    assert wired.store.subscriptions_of("lost") == []
    assert wired.store.rooms_of("lost") == []
    assert [s.connection_id for s in wired.store.subscribers("market_data:AAPL")] == ["quiet"]
    assert wired.store.subscribers("alerts:*") == []
    assert wired.store.room_members("lobby") == ["quiet"]
    assert wired.store.room_members("solo") == []
    assert owned_by(wired, "lost") == {}
    # ... and the room counts no longer count it
    assert room_count(wired, "lobby") == 1
    assert room_count(wired, "solo") == 0
    # ... while the quiet live connection keeps everything it had
    quiet = wired.store.get_connection("quiet")
    assert quiet is not None
    assert (quiet.subscription_count, quiet.room_count) == (1, 1)
    assert [s.stream_key for s in wired.store.subscriptions_of("quiet")] == ["market_data:AAPL"]
    assert wired.store.rooms_of("quiet") == ["lobby"]


def test_the_sweep_asks_the_gateway_only_about_idle_connections(wired: Wired, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN an idle connection with a session, a connection active just now, and the rows that are not connections
    asked: list[str] = []
    real_info = wired.gateway.info

    def info(connection_id: str) -> dict[str, object] | None:
        asked.append(connection_id)
        return real_info(connection_id)

    monkeypatch.setattr(wired.gateway, "info", info)
    wired.connect("idle")
    wired.send("idle", {"action": "hello"})  # leaves a session#... row
    pass_idle_timeout(wired)
    wired.connect("active")  # leaves user#... and rate#... rows too

    # WHEN the sweeper runs
    removed = wired.service.sweep()

    # THEN only the idle connection was looked up (and kept: the gateway knows it)
    assert asked == ["idle"]
    assert removed == 0
    assert wired.store.get_connection("idle") is not None


def test_a_connection_that_vanished_while_active_is_swept_once_it_has_been_idle(wired: Wired) -> None:
    # GIVEN a connection that vanished a moment after its last frame
    wired.connect("recent")
    subscribe(wired, "recent", AAPL)
    vanish(wired, "recent")

    # WHEN the sweeper runs before the idle timeout has passed, THEN it is not looked at yet
    assert wired.service.sweep() == 0
    assert wired.store.get_connection("recent") is not None

    # WHEN a later run comes after the idle timeout, THEN it is removed with its subscription
    pass_idle_timeout(wired)
    assert wired.service.sweep() == 1
    assert wired.store.get_connection("recent") is None
    assert wired.store.subscribers("market_data:AAPL") == []


def test_sweeping_frees_the_room_place_a_vanished_member_held(settings: Settings, wired: Wired) -> None:
    # GIVEN a room of two places held by a vanished member and a live one
    small = Wired(
        settings.model_copy(update={"limits": Limits(clients_per_room=2)}),
        wired.store._db,
        Clock(time.time()),
    )
    small.connect("lost", user_id="ghost")
    small.connect("live", user_id="stayer")
    join(small, "lost", "desk")
    join(small, "live", "desk")
    vanish(small, "lost")
    small.connect("newcomer", user_id="newcomer")
    assert join(small, "newcomer", "desk")["payload"]["error_code"] == "ROOM_FULL"
    pass_idle_timeout(small)

    # WHEN the sweeper runs
    assert small.service.sweep() == 1

    # THEN the newcomer gets the place
    joined = join(small, "newcomer", "desk")
    assert joined["message_type"] == "join_room", joined
    assert sorted(small.store.room_members("desk")) == ["live", "newcomer"]
    assert room_count(small, "desk") == 2


def test_a_late_disconnect_after_the_sweep_changes_nothing(wired: Wired) -> None:
    # GIVEN a vanished connection in a room with a live member, already swept
    wired.connect("lost")
    wired.connect("live")
    join(wired, "lost", "lobby")
    join(wired, "live", "lobby")
    vanish(wired, "lost")
    pass_idle_timeout(wired)
    assert wired.service.sweep() == 1

    # WHEN its $disconnect arrives after all (best effort means late, too) and the sweeper runs again
    late = wired.service.disconnect("lost")
    again = wired.service.sweep()

    # THEN nothing more is removed and the room is not counted down twice
    assert late is False
    assert again == 0
    assert room_count(wired, "lobby") == 1
    assert wired.store.room_members("lobby") == ["live"]


def test_a_swept_client_resumes_its_session_with_its_subscriptions_and_rooms(wired: Wired) -> None:
    # GIVEN a client with a session, a subscription and a room, whose connection vanished and was swept
    wired.connect("lost", user_id="trader")
    session_token = wired.send("lost", {"action": "hello"})["payload"]["session_token"]
    subscribe(wired, "lost", AAPL)
    join(wired, "lost", "desk")
    vanish(wired, "lost")
    pass_idle_timeout(wired)
    assert wired.service.sweep() == 1

    # WHEN the client comes back on a new connection and resumes
    wired.connect("back", user_id="trader")
    resumed = wired.send("back", {"action": "resume", "session_token": session_token, "request_id": "r"})

    # THEN what the sweep removed is restored on the new connection
    assert resumed["message_type"] == "resumed", resumed
    assert resumed["payload"]["subscriptions"] == ["market_data:AAPL"]
    assert resumed["payload"]["rooms"] == ["desk"]
    assert [s.connection_id for s in wired.store.subscribers("market_data:AAPL")] == ["back"]
    assert wired.store.room_members("desk") == ["back"]


def test_sweeping_a_connection_whose_session_moved_on_leaves_the_live_connections_session_alone(
    wired: Wired,
) -> None:
    # GIVEN a client whose first connection vanished, which resumed on a second connection and then
    # changed its mind there: it dropped AAPL and subscribed to alerts
    wired.connect("first", user_id="trader")
    session_token = wired.send("first", {"action": "hello"})["payload"]["session_token"]
    subscribe(wired, "first", AAPL)
    vanish(wired, "first")
    wired.connect("second", user_id="trader")
    resumed = wired.send("second", {"action": "resume", "session_token": session_token, "request_id": "r"})
    session_token = resumed["payload"]["session_token"]
    wired.send("second", {"action": "unsubscribe", "streams": [AAPL]})
    subscribe(wired, "second", ALERTS)
    pass_idle_timeout(wired)
    wired.send("second", {"action": "ping"})  # the second connection is live and active

    # WHEN the sweeper removes the first connection
    assert wired.service.sweep() == 1

    # THEN a third connection that takes the session over (a reconnect before the 2 hour cut-off) gets what the
    # live second connection has, not what the swept first one had
    wired.connect("third", user_id="trader")
    taken = wired.send("third", {"action": "resume", "session_token": session_token, "request_id": "r3"})
    assert taken["message_type"] == "resumed", taken
    assert taken["payload"]["subscriptions"] == ["alerts:*"]


def test_the_late_disconnect_of_a_replaced_connection_leaves_the_live_connections_session_alone(wired: Wired) -> None:
    # GIVEN a client that replaced its connection before the 2 hour cut-off: the second one resumed the session
    # while the first was still open, and then subscribed to alerts as well
    wired.connect("first", user_id="trader")
    session_token = wired.send("first", {"action": "hello"})["payload"]["session_token"]
    subscribe(wired, "first", AAPL)
    wired.connect("second", user_id="trader")
    resumed = wired.send("second", {"action": "resume", "session_token": session_token, "request_id": "r"})
    session_token = resumed["payload"]["session_token"]
    subscribe(wired, "second", ALERTS)

    # WHEN the first connection is closed and its $disconnect runs
    assert wired.service.disconnect("first") is True

    # THEN the next connection to take the session over gets what the live second one has
    wired.connect("third", user_id="trader")
    taken = wired.send("third", {"action": "resume", "session_token": session_token, "request_id": "r3"})
    assert taken["message_type"] == "resumed", taken
    assert taken["payload"]["subscriptions"] == ["alerts:*", "market_data:AAPL"]


def test_a_resume_racing_the_old_connections_disconnect_still_gets_the_sessions_subscriptions(
    wired: Wired, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a client with a subscription and a room whose connection the server just closed; it is back at once
    wired.connect("old", user_id="trader")
    session_token = wired.send("old", {"action": "hello"})["payload"]["session_token"]
    subscribe(wired, "old", AAPL)
    join(wired, "old", "desk")
    wired.connect("new", user_id="trader")
    # ... and the old connection's $disconnect runs to its end just after the resume has found the old row
    real_subscriptions_of = wired.store.subscriptions_of
    raced: list[str] = []

    def subscriptions_of(connection_id: str) -> list[Any]:
        if connection_id == "old" and not raced:
            raced.append(connection_id)
            wired.service.disconnect("old")
        return real_subscriptions_of(connection_id)

    monkeypatch.setattr(wired.store, "subscriptions_of", subscriptions_of)

    # WHEN the client resumes on its new connection
    resumed = wired.send("new", {"action": "resume", "session_token": session_token, "request_id": "r"})

    # THEN the session's subscription and room moved to the new connection all the same
    assert raced == ["old"]
    assert resumed["message_type"] == "resumed", resumed
    assert resumed["payload"]["subscriptions"] == ["market_data:AAPL"]
    assert resumed["payload"]["rooms"] == ["desk"]
    assert [s.connection_id for s in wired.store.subscribers("market_data:AAPL")] == ["new"]
    assert wired.store.room_members("desk") == ["new"]


def test_a_connection_the_gateway_cannot_answer_for_does_not_stop_the_sweep(
    wired: Wired, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN two vanished connections, and a gateway that fails (after its retries) when asked about one of them
    for connection_id in ("unanswered", "lost"):
        wired.connect(connection_id)
        subscribe(wired, connection_id, AAPL)
        vanish(wired, connection_id)
    pass_idle_timeout(wired)
    real_info = wired.gateway.info

    def info(connection_id: str) -> dict[str, object] | None:
        if connection_id == "unanswered":
            raise GatewayError("GET @connections failed after 6 attempt(s): 429")
        return real_info(connection_id)

    monkeypatch.setattr(wired.gateway, "info", info)

    # WHEN the sweeper runs
    removed = wired.service.sweep()

    # THEN the one it could ask about is removed; the other is kept (unknown is not gone) for a later run
    assert removed == 1
    assert wired.store.get_connection("lost") is None
    assert wired.store.get_connection("unanswered") is not None
    monkeypatch.setattr(wired.gateway, "info", real_info)
    assert wired.service.sweep() == 1
    assert wired.store.get_connection("unanswered") is None


# ---------------------------------------------------------------- TTL, the last resort


def test_every_row_a_connection_owns_carries_a_ttl_beyond_two_hours(wired: Wired) -> None:
    # GIVEN a connection with a session, a subscription and a room
    written_at = time.time()
    wired.connect("c1")
    wired.send("c1", {"action": "hello"})
    subscribe(wired, "c1", AAPL)
    join(wired, "c1", "desk")

    # THEN its connection row, subscription row, membership row and session snapshot all expire, and not before
    # API Gateway's 2 hour maximum connection is over
    owned = owned_by(wired, "c1")
    rows = [item for hits in owned.values() for item in hits]
    assert set(owned) == {
        wired.settings.connections_table,
        wired.settings.subscriptions_table,
        wired.settings.rooms_table,
    }
    assert len(rows) == 4, rows  # connection, session (names its connection), subscription, membership
    for item in rows:
        assert "expires_at" in item, item
        assert int(item["expires_at"]["N"]) > written_at + TWO_HOURS, item
    # ... and every table has DynamoDB TTL switched on for that attribute
    for table in topology.TABLES:
        name = getattr(wired.settings, table.env_var.lower())
        ttl = wired.store._db.describe_time_to_live(TableName=name)["TimeToLiveDescription"]
        assert (ttl["TimeToLiveStatus"], ttl["AttributeName"]) == ("ENABLED", "expires_at"), name


# ---------------------------------------------------------------- the scheduled handler


def test_the_scheduled_sweeper_handler_removes_stale_rows_and_reports_the_count(
    wired: Wired, aws: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN rows written an hour ago: one connection that vanished (with a subscription and a room), one still open
    wired.clock.now = time.time() - 3600
    wired.connect("left-behind")
    subscribe(wired, "left-behind", AAPL)
    join(wired, "left-behind", "desk")
    wired.connect("idle-but-open", expires_in=2 * 3600)  # its token outlives the hour (an expired one is closed)
    vanish(wired, "left-behind")
    # ... the function's runtime on the same tables and gateway, with the real clock
    runtime = Runtime(wired.settings, dynamodb=aws["dynamodb"], gateway=wired.gateway)
    monkeypatch.setattr(handlers.sweeper, "runtime", lambda: runtime)

    # WHEN EventBridge Scheduler invokes the sweeper
    event = {
        "version": "0",
        "id": "sched-1",
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": "123456789012",
        "time": "2027-01-01T00:00:00Z",
        "region": "us-east-1",
        "resources": ["arn:aws:events:us-east-1:123456789012:rule/quanttrade-sweeper"],
        "detail": {},
    }
    result = handlers.sweeper.handler(event, LambdaContext())

    # THEN it reports one removal, and only the vanished connection and what it owned are gone
    assert result == {"removed": 1}
    assert owned_by(wired, "left-behind") == {}
    assert room_count(wired, "desk") == 0
    assert wired.store.get_connection("idle-but-open") is not None


# ---------------------------------------------------------------- access-token expiry


def test_a_live_connection_whose_token_expired_is_closed_by_the_next_sweep(wired: Wired) -> None:
    # GIVEN a live, busy connection whose token expires in 8 s and one whose token is good for an hour
    wired.connect("expiring", user_id="short-lived", expires_in=8)
    wired.connect("valid", user_id="long-lived")
    subscribe(wired, "expiring", AAPL)
    # WHEN the token has expired, before the idle timeout, and without another frame, the sweeper runs
    wired.clock.advance(9)
    removed = wired.service.sweep()
    # THEN the expired one is told and closed (its $disconnect removes its rows), and the other is left alone
    assert removed == 1
    assert wired.gateway.closed == ["expiring"]
    [notice] = wired.gateway.messages("expiring")[-1:]
    assert notice["payload"]["error_code"] == "AUTH_FAILED"
    assert wired.store.get_connection("valid") is not None
    # AND once API Gateway forgot it without a $disconnect, the next sweep removes what it owns
    assert wired.service.sweep() == 1
    assert owned_by(wired, "expiring") == {}
