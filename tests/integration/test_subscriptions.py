"""Subscription management on DynamoDB: subscribe/unsubscribe, idempotence, limits, permissions, filters, last value."""

from __future__ import annotations

import json
from typing import Any

import pytest

from quanttrade_ws.models import Connection
from quanttrade_ws.protocol import WILDCARD_SUBSCRIPTION_COST, MessageType, ServerMessage, StreamType
from tests.conftest import Wired


def connection_of(wired: Wired, connection_id: str) -> Connection:
    found = wired.store.get_connection(connection_id)
    assert found is not None, f"no connection row for {connection_id}"
    return found


def received(wired: Wired, connection_id: str) -> list[dict[str, Any]]:
    """Everything the connection received, decoded."""
    return wired.gateway.messages(connection_id)


def error_code(message: dict[str, Any]) -> str | None:
    return message["payload"].get("error_code") if message["message_type"] == "error" else None


def subscribe(*streams: dict[str, Any], request_id: str | None = None) -> dict[str, Any]:
    frame: dict[str, Any] = {"action": "subscribe", "streams": list(streams)}
    if request_id:
        frame["request_id"] = request_id
    return frame


def sub_count(wired: Wired, connection_id: str) -> int:
    return connection_of(wired, connection_id).subscription_count


def test_subscribe_replies_and_records_the_subscription(wired: Wired) -> None:
    wired.connect("a")
    # WHEN a client subscribes to a symbol stream and a whole stream type
    reply = wired.send(
        "a", subscribe({"stream_type": "market_data", "symbol": "aapl"}, {"stream_type": "alerts"}, request_id="s1")
    )
    # THEN it gets `subscribe` with success and a plain message, echoing its request
    assert reply["message_type"] == "subscribe"
    assert reply["request_id"] == "s1"
    assert reply["payload"]["success"] is True
    assert "market_data:AAPL" in reply["payload"]["message"]
    assert reply["payload"]["streams"] == ["market_data:AAPL", "alerts:*"]
    # AND fan-out finds it by stream key
    assert [s.connection_id for s in wired.store.subscribers("market_data:AAPL")] == ["a"]
    assert [s.connection_id for s in wired.store.subscribers("alerts:*")] == ["a"]
    assert sub_count(wired, "a") == 2


@pytest.mark.parametrize("stream_type", [t.value for t in StreamType])
def test_every_stream_type_can_be_subscribed(wired: Wired, stream_type: str) -> None:
    wired.connect("a")
    assert wired.send("a", subscribe({"stream_type": stream_type}))["message_type"] == "subscribe"
    assert wired.store.subscribers(f"{stream_type}:*")


def test_subscription_keeps_interval_and_filters(wired: Wired) -> None:
    wired.connect("a")
    wired.send(
        "a",
        subscribe(
            {"stream_type": "predictions", "symbol": "TSLA", "interval": 5, "filters": {"min_confidence": "0.7"}}
        ),
    )
    [subscription] = wired.store.subscribers("predictions:TSLA")
    assert subscription.interval == 5
    assert subscription.filters == {"min_confidence": "0.7"}
    assert subscription.user_id == "user-1"


def test_unsubscribe(wired: Wired) -> None:
    wired.connect("a")
    wired.send("a", subscribe({"stream_type": "market_data", "symbol": "AAPL"}, {"stream_type": "alerts"}))
    # WHEN one of two streams is unsubscribed
    reply = wired.send(
        "a", {"action": "unsubscribe", "streams": [{"stream_type": "market_data", "symbol": "AAPL"}], "request_id": "u"}
    )
    # THEN the reply is `unsubscribe` and only that subscription is gone
    assert reply["message_type"] == "unsubscribe"
    assert reply["request_id"] == "u"
    assert reply["payload"]["success"] is True
    assert reply["payload"]["streams"] == ["market_data:AAPL"]
    assert wired.store.subscribers("market_data:AAPL") == []
    assert [s.stream_key for s in wired.store.subscriptions_of("a")] == ["alerts:*"]
    assert sub_count(wired, "a") == 1


def test_unsubscribe_from_something_not_subscribed(wired: Wired) -> None:
    wired.connect("a")
    reply = wired.send("a", {"action": "unsubscribe", "streams": [{"stream_type": "alerts"}]})
    assert reply["message_type"] == "unsubscribe"
    assert reply["payload"]["streams"] == []
    assert reply["payload"]["message"]
    assert sub_count(wired, "a") == 0  # never negative


def test_subscribing_twice_is_idempotent(wired: Wired) -> None:
    wired.connect("a")
    spec = {"stream_type": "market_data", "symbol": "AAPL"}
    wired.send("a", subscribe(spec))
    # WHEN the same stream is subscribed again (even spelled in lower case)
    reply = wired.send("a", subscribe({**spec, "symbol": "aapl"}))
    # THEN it succeeds, and there is still one row and one counted subscription
    assert reply["message_type"] == "subscribe"
    assert reply["payload"]["success"] is True
    assert len(wired.store.subscribers("market_data:AAPL")) == 1
    assert sub_count(wired, "a") == 1


def test_resubscribing_takes_the_newest_filters(wired: Wired) -> None:
    wired.connect("a")
    wired.send("a", subscribe({"stream_type": "market_data", "symbol": "AAPL", "filters": {"min_volume": "10"}}))
    wired.send("a", subscribe({"stream_type": "market_data", "symbol": "AAPL", "filters": {"min_volume": "99"}}))
    [subscription] = wired.store.subscribers("market_data:AAPL")
    assert subscription.filters == {"min_volume": "99"}


def test_the_same_stream_twice_in_one_frame_counts_once(wired: Wired) -> None:
    wired.connect("a")
    reply = wired.send("a", subscribe({"stream_type": "alerts"}, {"stream_type": "alerts"}))
    assert reply["message_type"] == "subscribe"
    assert sub_count(wired, "a") == 1


@pytest.mark.parametrize(("level", "limit"), [("free", 5), ("basic", 20), ("premium", 50), ("enterprise", 50)])
def test_subscription_limit_per_level(wired: Wired, level: str, limit: int) -> None:
    # GIVEN a client of this level subscribed up to its limit
    wired.connect("a", level=level)
    assert wired.settings.limits.subscriptions_for(level) == limit
    streams = [{"stream_type": "market_data", "symbol": f"S{i}"} for i in range(limit)]
    assert wired.send("a", subscribe(*streams))["message_type"] == "subscribe"
    assert sub_count(wired, "a") == limit
    # WHEN it subscribes to one more
    reply = wired.send("a", subscribe({"stream_type": "market_data", "symbol": "ONE.MORE"}, request_id="lim"))
    # THEN SUBSCRIPTION_LIMIT, in plain words, and nothing was added
    assert error_code(reply) == "SUBSCRIPTION_LIMIT"
    assert str(limit) in reply["payload"]["message"]
    assert reply["request_id"] == "lim"
    assert wired.store.subscribers("market_data:ONE.MORE") == []
    assert sub_count(wired, "a") == limit
    # AND an existing subscription may still be renewed at the limit
    assert wired.send("a", subscribe(streams[0]))["message_type"] == "subscribe"


def test_unsubscribing_frees_a_place(wired: Wired) -> None:
    wired.connect("a", level="free")
    wired.send("a", subscribe(*[{"stream_type": "market_data", "symbol": f"S{i}"} for i in range(5)]))
    assert error_code(wired.send("a", subscribe({"stream_type": "alerts"}))) == "SUBSCRIPTION_LIMIT"
    wired.send("a", {"action": "unsubscribe", "streams": [{"stream_type": "market_data", "symbol": "S0"}]})
    assert wired.send("a", subscribe({"stream_type": "alerts"}))["message_type"] == "subscribe"


def test_limit_reached_part_way_through_a_frame_names_what_was_added(wired: Wired) -> None:
    wired.connect("a", level="free")
    wired.send("a", subscribe(*[{"stream_type": "market_data", "symbol": f"S{i}"} for i in range(4)]))
    reply = wired.send("a", subscribe({"stream_type": "alerts"}, {"stream_type": "performance"}))
    assert error_code(reply) == "SUBSCRIPTION_LIMIT"
    assert "alerts:*" in reply["payload"]["message"]
    assert sub_count(wired, "a") == 5


@pytest.mark.parametrize("stream_type", [t.value for t in StreamType])
def test_subscribing_without_read_permission_is_forbidden(wired: Wired, stream_type: str) -> None:
    # GIVEN a client with every read permission but this one
    others = tuple(f"read:{t.value}" for t in StreamType if t.value != stream_type)
    wired.connect("a", permissions=(*others, "rooms:join"))
    # WHEN it subscribes to an allowed stream and the forbidden one in one frame
    allowed = next(t.value for t in StreamType if t.value != stream_type)
    reply = wired.send("a", subscribe({"stream_type": allowed}, {"stream_type": stream_type}))
    # THEN FORBIDDEN and nothing at all was subscribed
    assert error_code(reply) == "FORBIDDEN"
    assert stream_type in reply["payload"]["message"]
    assert wired.store.subscriptions_of("a") == []


def test_unknown_filter_is_invalid_message(wired: Wired) -> None:
    wired.connect("a")
    reply = wired.send("a", subscribe({"stream_type": "market_data", "filters": {"colour": "red"}}, request_id="f"))
    assert error_code(reply) == "INVALID_MESSAGE"
    assert "colour" in reply["payload"]["message"]
    assert reply["request_id"] == "f"
    assert wired.store.subscriptions_of("a") == []


@pytest.mark.parametrize(
    "spec",
    [
        {"stream_type": "market_data", "filters": {"min_volume": "lots"}},
        {"stream_type": "predictions", "filters": {"min_confidence": "high"}},
        {"stream_type": "alerts", "filters": {"min_severity": "apocalyptic"}},
        {"stream_type": "alerts", "filters": {"min_confidence": "0.5"}},  # a filter of another stream type
    ],
)
def test_bad_filter_values_are_invalid_message(wired: Wired, spec: dict[str, Any]) -> None:
    wired.connect("a")
    assert error_code(wired.send("a", subscribe(spec))) == "INVALID_MESSAGE"
    assert wired.store.subscriptions_of("a") == []


def test_known_filters_are_accepted(wired: Wired) -> None:
    wired.connect("a")
    reply = wired.send(
        "a",
        subscribe(
            {"stream_type": "alerts", "filters": {"min_severity": "high", "alert_type": "price"}},
            {"stream_type": "market_data", "symbol": "AAPL", "filters": {"min_volume": "1000"}},
        ),
    )
    assert reply["message_type"] == "subscribe"


def test_new_subscriber_receives_the_last_value(wired: Wired) -> None:
    # GIVEN the stream head for market_data:AAPL holds a last message
    last = ServerMessage(
        message_type=MessageType.MARKET_DATA,
        payload={"symbol": "AAPL", "price": 187.5},
        stream="market_data:AAPL",
        seq=7,
    ).to_json()
    wired.store._db.put_item(
        TableName=wired.settings.streams_table,
        Item={
            "stream": {"S": "market_data:AAPL"},
            "seq": {"N": "0"},
            "last_seq": {"N": "7"},
            "last_message": {"S": last},
            "last_message_seq": {"N": "7"},
        },
    )
    wired.connect("a")
    # WHEN a client subscribes
    wired.send("a", subscribe({"stream_type": "market_data", "symbol": "AAPL"}))
    # THEN it gets the subscribe reply, saying the stream stands just before the last value, and then the last value
    messages = received(wired, "a")
    assert [m["message_type"] for m in messages] == ["subscribe", "market_data"]
    assert messages[0]["payload"]["last_seq"] == {"market_data:AAPL": 6}
    assert messages[1] == json.loads(last)


def test_no_last_value_for_a_stream_without_one(wired: Wired) -> None:
    wired.connect("a")
    wired.send("a", subscribe({"stream_type": "market_data", "symbol": "MSFT"}, {"stream_type": "alerts"}))
    # THEN only the reply, which says the symbol's stream has no message yet (a wildcard has no single stream)
    [reply] = received(wired, "a")
    assert reply["payload"]["last_seq"] == {"market_data:MSFT": 0}


def test_subscriptions_belong_to_their_connection(wired: Wired) -> None:
    wired.connect("a")
    wired.connect("b", user_id="user-2")
    wired.send("a", subscribe({"stream_type": "alerts"}))
    wired.send("b", subscribe({"stream_type": "alerts"}))
    wired.send("a", {"action": "unsubscribe", "streams": [{"stream_type": "alerts"}]})
    assert [s.connection_id for s in wired.store.subscribers("alerts:*")] == ["b"]


def test_a_stream_named_many_times_in_one_frame_is_processed_once(
    wired: Wired, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a connection, and a count of the subscription writes the store makes
    wired.connect("c1", level="free")
    writes: list[str] = []
    add, remove = wired.store.add_subscription, wired.store.remove_subscription
    monkeypatch.setattr(
        wired.store, "add_subscription", lambda s, *a, **k: writes.append(s.stream_key) or add(s, *a, **k)
    )
    monkeypatch.setattr(
        wired.store, "remove_subscription", lambda key, *a, **k: writes.append(key) or remove(key, *a, **k)
    )
    aapl = [{"stream_type": "market_data", "symbol": symbol} for symbol in ("AAPL", "aapl") * 25]
    # WHEN one subscribe names AAPL 50 times (in two spellings of one key), the last time with an interval
    aapl[-1] = {**aapl[-1], "interval": 5}
    reply = wired.send("c1", subscribe(*aapl))
    # THEN it is written once, counts once, answers once, and keeps the last spelling's interval
    assert writes == ["market_data:AAPL"]
    assert reply["payload"]["streams"] == ["market_data:AAPL"]
    assert sub_count(wired, "c1") == 1
    assert [s.interval for s in wired.store.subscribers("market_data:AAPL")] == [5]
    # AND one unsubscribe naming it 50 times removes it once
    writes.clear()
    reply = wired.send("c1", {"action": "unsubscribe", "streams": aapl})
    assert writes == ["market_data:AAPL"]
    assert reply["payload"]["streams"] == ["market_data:AAPL"]


# ---------------------------------------------------------------- the level's budget covers data rooms and wildcards


def test_data_rooms_count_toward_the_subscription_limit(wired: Wired) -> None:
    # GIVEN a free user (5 subscriptions) with 4 symbol subscriptions
    wired.connect("c1", level="free")
    symbols = [{"stream_type": "market_data", "symbol": s} for s in ("A", "B", "C", "D")]
    assert wired.send("c1", subscribe(*symbols))["message_type"] == "subscribe"
    # WHEN it joins one data room, THEN that is its fifth subscription
    assert wired.send("c1", {"action": "joinRoom", "room": "market_data_AAPL"})["message_type"] == "join_room"
    assert sub_count(wired, "c1") == 5
    # AND a second data room is over the limit, and so is another subscription; neither is added
    wired.clock.advance(1)
    reply = wired.send("c1", {"action": "joinRoom", "room": "predictions_MSFT", "request_id": "j"})
    assert error_code(reply) == "SUBSCRIPTION_LIMIT"
    assert reply["request_id"] == "j"
    assert error_code(wired.send("c1", subscribe({"stream_type": "alerts"}))) == "SUBSCRIPTION_LIMIT"
    assert wired.store.rooms_of("c1") == ["market_data_AAPL"]
    assert (connection_of(wired, "c1").room_count, sub_count(wired, "c1")) == (1, 5)
    # AND a chat room does not count as a subscription
    assert wired.send("c1", {"action": "joinRoom", "room": "lobby"})["message_type"] == "join_room"
    # AND leaving the data room gives its place back
    wired.clock.advance(1)
    assert wired.send("c1", {"action": "leaveRoom", "room": "market_data_AAPL"})["message_type"] == "leave_room"
    assert sub_count(wired, "c1") == 4
    assert wired.send("c1", {"action": "joinRoom", "room": "predictions_MSFT"})["message_type"] == "join_room"


def test_a_wildcard_over_a_per_symbol_feed_costs_a_block_of_symbols(wired: Wired) -> None:
    # GIVEN a free user (5) and a basic user (20)
    assert WILDCARD_SUBSCRIPTION_COST == 10
    wired.connect("free", user_id="free-user", level="free")
    wired.connect("basic", user_id="basic-user", level="basic")
    every_symbol = {"stream_type": "market_data"}
    # WHEN the free user asks for every market data symbol, THEN it is over its budget
    assert error_code(wired.send("free", subscribe(every_symbol))) == "SUBSCRIPTION_LIMIT"
    assert wired.store.subscriptions_of("free") == []
    # ... while a type-level stream without symbols (alerts) is one subscription
    assert wired.send("free", subscribe({"stream_type": "alerts"}))["message_type"] == "subscribe"
    assert sub_count(wired, "free") == 1
    # WHEN the basic user takes both per-symbol wildcards, THEN they use its 20, and nothing more fits
    assert wired.send("basic", subscribe(every_symbol, {"stream_type": "predictions"}))["message_type"] == "subscribe"
    assert sub_count(wired, "basic") == 20
    assert error_code(wired.send("basic", subscribe({"stream_type": "alerts"}))) == "SUBSCRIPTION_LIMIT"
    # AND unsubscribing a wildcard gives back all it took
    assert wired.send("basic", {"action": "unsubscribe", "streams": [every_symbol]})["message_type"] == "unsubscribe"
    assert sub_count(wired, "basic") == 10
    # AND the limits a client is given say what a wildcard costs
    limits = wired.send("basic", {"action": "hello"})["payload"]["limits"]
    assert limits["wildcard_subscription_cost"] == WILDCARD_SUBSCRIPTION_COST
