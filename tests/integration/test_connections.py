"""Connection management on DynamoDB: $connect records, $disconnect cleans up, the per-user connect rate."""

from __future__ import annotations

from typing import Any

import pytest

from quanttrade_ws.auth import ALL_PERMISSIONS, Identity
from quanttrade_ws.service.lifecycle import ConnectRefused
from quanttrade_ws.store.rooms import ROOM_META
from tests.conftest import Wired
from tests.integration.conftest import connection_of, received

TWO_HOURS = 2 * 3600


def raw_connection(wired: Wired, connection_id: str) -> dict[str, Any] | None:
    return wired.store._db.get_item(
        TableName=wired.settings.connections_table, Key={"pk": {"S": connection_id}}, ConsistentRead=True
    ).get("Item")


def expires_at_of(wired: Wired, connection_id: str) -> int:
    item = raw_connection(wired, connection_id)
    assert item is not None
    return int(item["expires_at"]["N"])


def room_count_item(wired: Wired, room: str) -> int:
    item = wired.store._db.get_item(
        TableName=wired.settings.rooms_table, Key={"room": {"S": room}, "member_id": {"S": ROOM_META}}
    ).get("Item")
    return int(item["member_count"]["N"]) if item else 0


def test_connect_records_identity_and_times(wired: Wired) -> None:
    # GIVEN a verified identity
    identity = Identity(
        user_id="trader-1",
        client_type="desktop",
        permissions=frozenset({"read:alerts", "rooms:join"}),
        subscription_level="basic",
        token_expires_at=int(wired.clock()) + 900,
    )
    # WHEN $connect records it
    wired.gateway.connect("c1")
    wired.service.connect("c1", identity)
    # THEN the row carries the identity, when it connected and its last activity
    connection = wired.store.get_connection("c1")
    assert connection is not None
    assert connection.identity == identity
    assert connection.connected_at == int(wired.clock() * 1000)
    assert connection.last_activity == int(wired.clock())
    assert connection.room_count == 0
    assert connection.subscription_count == 0


def test_connect_uses_api_gateway_connected_at_when_given(wired: Wired) -> None:
    wired.service.connect("c1", Identity(user_id="u"), connected_at_ms=1_700_000_000_123)
    assert connection_of(wired, "c1").connected_at == 1_700_000_000_123


def test_connection_ttl_outlives_api_gateways_two_hour_maximum(wired: Wired) -> None:
    # GIVEN a new connection, THEN its TTL lies beyond API Gateway's 2 hour maximum connection
    wired.connect("c1")
    expires_at = int(expires_at_of(wired, "c1"))
    assert expires_at > wired.clock() + TWO_HOURS


def test_activity_moves_last_activity_and_ttl(wired: Wired) -> None:
    # GIVEN a connection, WHEN it sends a frame an hour later
    wired.connect("c1")
    wired.clock.now += 3600
    wired.send("c1", {"action": "ping"})
    # THEN its last activity and TTL move with it
    assert connection_of(wired, "c1").last_activity == int(wired.clock())
    assert expires_at_of(wired, "c1") > wired.clock() + TWO_HOURS


def test_disconnect_removes_connection_memberships_and_subscriptions(wired: Wired) -> None:
    # GIVEN a connection in two rooms with two subscriptions, and another member in one room
    wired.connect("c1")
    wired.connect("c2", user_id="user-2")
    for room in ("lobby", "desk"):
        wired.send("c1", {"action": "joinRoom", "room": room})
    wired.send("c2", {"action": "joinRoom", "room": "lobby"})
    wired.send(
        "c1",
        {
            "action": "subscribe",
            "streams": [{"stream_type": "market_data", "symbol": "AAPL"}, {"stream_type": "alerts"}],
        },
    )
    assert wired.store.subscriptions_of("c1")
    # WHEN $disconnect runs
    assert wired.service.disconnect("c1") is True
    # THEN the connection, its memberships and subscriptions are gone, and room counts follow
    assert wired.store.get_connection("c1") is None
    assert wired.store.rooms_of("c1") == []
    assert wired.store.subscriptions_of("c1") == []
    assert wired.store.subscribers("market_data:AAPL") == []
    assert wired.store.subscribers("alerts:*") == []
    assert wired.store.room_members("lobby") == ["c2"]
    assert wired.store.room_members("desk") == []
    assert room_count_item(wired, "lobby") == 1
    assert room_count_item(wired, "desk") == 0
    # AND the other member keeps everything it had
    assert wired.store.get_connection("c2") is not None


def test_disconnect_is_idempotent(wired: Wired) -> None:
    wired.connect("c1")
    wired.send("c1", {"action": "joinRoom", "room": "lobby"})
    assert wired.service.disconnect("c1") is True
    # WHEN $disconnect is delivered again, THEN nothing fails and nothing is left to remove
    assert wired.service.disconnect("c1") is False
    assert room_count_item(wired, "lobby") == 0  # not decremented twice


def test_disconnect_of_an_unknown_connection_is_fine(wired: Wired) -> None:
    assert wired.service.disconnect("never-connected") is False


def test_disconnect_keeps_a_session_snapshot_for_resume(wired: Wired) -> None:
    wired.connect("c1")
    wired.send("c1", {"action": "hello"})
    wired.send("c1", {"action": "joinRoom", "room": "lobby"})
    wired.send("c1", {"action": "subscribe", "streams": [{"stream_type": "alerts"}]})
    session_id = connection_of(wired, "c1").session_id
    assert session_id is not None
    wired.service.disconnect("c1")
    snapshot = wired.store.load_session(session_id)
    assert snapshot is not None
    assert snapshot.rooms == ("lobby",)
    assert [s.stream_key for s in snapshot.subscriptions] == ["alerts:*"]


def test_a_frame_from_a_removed_connection_gets_no_reply_and_creates_nothing(wired: Wired) -> None:
    wired.connect("c1")
    wired.service.disconnect("c1")
    before = len(received(wired, "c1"))
    wired.service.handle_frame("c1", '{"action": "ping"}')
    assert len(received(wired, "c1")) == before
    assert raw_connection(wired, "c1") is None


def test_connections_per_minute_per_user(wired: Wired) -> None:
    limit = wired.settings.limits.connections_per_minute
    assert limit == 60
    # GIVEN a user who opened (and closed, to stay under the open-connection cap) 60 connections this minute
    for i in range(limit):
        wired.connect(f"c{i}", user_id="burst")
        wired.service.disconnect(f"c{i}")
    # WHEN it opens one more in the same minute, THEN $connect is refused with 429
    with pytest.raises(ConnectRefused) as refused:
        wired.connect("c-over", user_id="burst")
    assert refused.value.status_code == 429
    assert wired.store.get_connection("c-over") is None
    # AND another user is not affected
    wired.connect("other", user_id="calm")
    # AND two minutes later the user may connect again
    wired.clock.now += 120
    wired.connect("c-next", user_id="burst")
    assert wired.store.get_connection("c-next") is not None


def test_the_connect_window_slides_so_there_is_no_burst_at_the_minute(wired: Wired) -> None:
    # GIVEN a user who opened 60 connections in the last second of a clock minute
    minute = (int(wired.clock.now) // 60 + 1) * 60
    wired.clock.now = minute - 1
    for i in range(60):
        wired.connect(f"c{i}", user_id="burst")
        wired.service.disconnect(f"c{i}")
    # WHEN it tries 60 more one second into the next minute
    wired.clock.now = minute + 1
    admitted = 0
    for i in range(60):
        try:
            wired.connect(f"late{i}", user_id="burst")
        except ConnectRefused:
            continue
        admitted += 1
        wired.service.disconnect(f"late{i}")
    # THEN (almost) none are let in: the window is the last 60 seconds, not the clock minute
    assert admitted <= 1


def test_open_connections_per_user_are_capped(wired: Wired) -> None:
    cap = wired.settings.limits.connections_per_user
    assert cap == 10
    # GIVEN a user with 10 open connections
    for i in range(cap):
        wired.connect(f"c{i}", user_id="many")
    # WHEN it opens an eleventh, THEN $connect is refused with 429 and nothing is recorded
    with pytest.raises(ConnectRefused) as refused:
        wired.connect("c-over", user_id="many")
    assert refused.value.status_code == 429
    assert wired.store.get_connection("c-over") is None
    assert wired.store.user_connections("many") == {f"c{i}" for i in range(cap)}
    # AND another user is not affected
    wired.connect("other", user_id="few")
    # AND once one closes, another may open
    wired.service.disconnect("c0")
    wired.connect("c-again", user_id="many")
    # AND a connection that vanished without $disconnect (its row expired) does not hold a place forever
    wired.store.delete_connection("c1")
    wired.connect("c-after-ttl", user_id="many")
    assert "c1" not in wired.store.user_connections("many")
    assert len(wired.store.user_connections("many")) == cap


def test_sweep_removes_only_connections_the_gateway_no_longer_knows(wired: Wired) -> None:
    # GIVEN two connections idle past the idle timeout: one the gateway lost, one still open
    wired.connect("lost")
    wired.connect("quiet")
    wired.send("lost", {"action": "joinRoom", "room": "lobby"})
    wired.gateway.gone.add("lost")
    wired.clock.now += wired.settings.idle_timeout_seconds + 1
    wired.connect("fresh")
    # WHEN the sweeper runs
    removed = wired.service.sweep()
    # THEN only the lost one and what it owned are removed
    assert removed == 1
    assert wired.store.get_connection("lost") is None
    assert wired.store.rooms_of("lost") == []
    assert wired.store.get_connection("quiet") is not None
    assert wired.store.get_connection("fresh") is not None


def test_connect_stores_every_permission(wired: Wired) -> None:
    wired.connect("c1", permissions=ALL_PERMISSIONS, level="enterprise")
    connection = connection_of(wired, "c1")
    assert connection.identity.permissions == frozenset(ALL_PERMISSIONS)
    assert connection.identity.subscription_level == "enterprise"


def test_a_connect_costs_two_dynamodb_writes_whatever_state_the_rate_window_is_in(wired: Wired) -> None:
    from tests.dynamo_calls import DynamoCalls

    calls = DynamoCalls(wired.store._raw)
    minute = (int(wired.clock.now) // 60 + 1) * 60
    writes = ("UpdateItem", "PutItem", "TransactWriteItems")

    def connect_cost(connection_id: str) -> dict[str, int]:
        calls.reset()
        wired.connect(connection_id, user_id="counted")
        connected = {op: n for op, n in calls.calls.items() if op in writes}
        wired.service.disconnect(connection_id)
        return connected

    # GIVEN a user never seen; WHEN it connects: its rate item is created by the first try
    wired.clock.now = minute + 1
    first = connect_cost("first")
    # WHEN it connects again within the same minute, one minute on, and ten minutes on
    same = connect_cost("same")
    wired.clock.now = minute + 61
    next_minute = connect_cost("next")
    wired.clock.now = minute + 661
    much_later = connect_cost("later")
    # THEN the row and the open-connection claim in one transaction, and one rate-window write for a new
    # user or the same minute, two when the minute moved on (a refused try, then the step that fits)
    assert first == {"TransactWriteItems": 1, "UpdateItem": 1}
    assert same == {"TransactWriteItems": 1, "UpdateItem": 1}
    assert next_minute == {"TransactWriteItems": 1, "UpdateItem": 2} == much_later
    # AND the counts are right after those jumps: the ten-minute gap left nothing of the previous minute,
    # so a count nine seconds later is the second of its minute
    wired.clock.now = minute + 670
    assert wired.store.count_in_window("connect#counted", 60) == pytest.approx(2)


def test_a_disconnect_queries_only_the_indexes_its_connection_counts_rows_in(wired: Wired) -> None:
    from tests.dynamo_calls import DynamoCalls

    # GIVEN connections owning nothing, one subscription, one room; and rows whose connection row is gone
    calls = DynamoCalls(wired.store._raw)
    wired.connect("bare")
    wired.connect("subscribed")
    wired.send("subscribed", {"action": "subscribe", "streams": [{"stream_type": "alerts"}]})
    wired.connect("member")
    wired.send("member", {"action": "joinRoom", "room": "lobby"})
    wired.connect("orphan")
    wired.send("orphan", {"action": "subscribe", "streams": [{"stream_type": "alerts"}]})
    wired.send("orphan", {"action": "joinRoom", "room": "desk"})
    wired.store.delete_connection("orphan")

    def queries_of_disconnect(connection_id: str) -> dict[str, int]:
        calls.reset()
        wired.service.disconnect(connection_id)
        return {key.split("/")[0]: n for key, n in calls.queries.items()}

    # WHEN each disconnects, THEN the counters on the connection row decide which index is read
    subscriptions, rooms = wired.settings.subscriptions_table, wired.settings.rooms_table
    assert queries_of_disconnect("bare") == {}
    assert queries_of_disconnect("subscribed") == {subscriptions: 1}
    assert queries_of_disconnect("member") == {rooms: 1}
    # AND without the row both indexes are read, and what they find is removed all the same
    assert queries_of_disconnect("orphan") == {subscriptions: 1, rooms: 1}
    for connection_id in ("subscribed", "member", "orphan"):
        assert wired.store.subscriptions_of(connection_id) == [] and wired.store.rooms_of(connection_id) == []
    assert wired.store.subscribers("alerts:*") == []
    assert room_count_item(wired, "lobby") == 0 and room_count_item(wired, "desk") == 0


def test_a_disconnect_deletes_its_subscription_rows_in_one_batch_without_a_transaction(wired: Wired) -> None:
    from tests.dynamo_calls import DynamoCalls

    # GIVEN a connection with two subscriptions (the connection row's counter goes with the row itself)
    calls = DynamoCalls(wired.store._raw)
    wired.connect("leaving")
    streams = [{"stream_type": "alerts"}, {"stream_type": "market_regime"}]
    wired.send("leaving", {"action": "subscribe", "streams": streams})
    assert len(wired.store.subscriptions_of("leaving")) == 2

    # WHEN it disconnects
    calls.reset()
    wired.service.disconnect("leaving")

    # THEN its rows were read from the index alone (it holds whole rows: no second read of them) and deleted in
    # one BatchWriteItem (no transaction: the counter goes with the connection row), and nothing is left
    assert calls.calls["Query"] == 1 and calls.calls["BatchGetItem"] == 0
    assert calls.calls["TransactWriteItems"] == 0
    assert calls.calls["BatchWriteItem"] == 1
    assert calls.calls["DeleteItem"] == 1  # the connection row
    assert wired.store.subscriptions_of("leaving") == []
    assert wired.store.subscribers("alerts:*") == [] and wired.store.subscribers("market_regime:*") == []


def test_removing_a_subscription_that_is_gone_says_so(wired: Wired) -> None:
    # GIVEN a subscription removed once
    wired.connect("twice")
    wired.send("twice", {"action": "subscribe", "streams": [{"stream_type": "alerts"}]})
    assert wired.store.remove_subscription("alerts:*", "twice") is True

    # WHEN it is removed again, THEN there was nothing to remove
    assert wired.store.remove_subscription("alerts:*", "twice") is False
