"""Subscription management on DynamoDB: subscribe/unsubscribe, idempotence, limits, permissions, filters, last value."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest

from quanttrade_ws.models import StreamHead, Subscription
from quanttrade_ws.protocol import (
    WILDCARD_SUBSCRIPTION_COST,
    MessageType,
    ServerMessage,
    StreamType,
    Subscribe,
    stream_spec,
)
from quanttrade_ws.service.core import ActionContext
from quanttrade_ws.store.subscriptions import SUBSCRIPTIONS_PER_TRANSACTION
from tests.conftest import Wired
from tests.dynamo_calls import DynamoCalls
from tests.integration.conftest import connection_of, error_code, received


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


def test_resending_a_subscribe_of_held_streams_buys_no_writes_and_no_posts(wired: Wired) -> None:
    # GIVEN a client holding two market data streams that have a last value
    for symbol in ("AAPL", "MSFT"):
        wired.store._db.put_item(
            TableName=wired.settings.streams_table,
            Item={
                "stream": {"S": f"market_data:{symbol}"},
                "seq": {"N": "0"},
                "last_seq": {"N": "7"},
                "last_message": {"S": json.dumps({"message_type": "market_data", "stream": f"market_data:{symbol}"})},
                "last_message_seq": {"N": "7"},
            },
        )
    wired.connect("a")
    streams = [{"stream_type": "market_data", "symbol": symbol} for symbol in ("AAPL", "MSFT")]
    wired.send("a", subscribe(*streams))
    assert [m["message_type"] for m in received(wired, "a")] == ["subscribe", "market_data", "market_data"]
    # WHEN it sends the same subscribe again
    calls = DynamoCalls(wired.store._raw)
    before = len(received(wired, "a"))
    reply = wired.send("a", subscribe(*streams))
    # THEN it is answered (each stream where it stands), with no last value again and no row rewritten
    assert reply["payload"]["last_seq"] == {"market_data:AAPL": 7, "market_data:MSFT": 7}
    assert len(received(wired, "a")) == before + 1
    assert calls.calls["PutItem"] == 0
    # AND a changed subscription is still rewritten
    wired.send("a", subscribe({**streams[0], "interval": 5}))
    assert calls.calls["PutItem"] == 1
    assert [sub.interval for sub in wired.store.subscribers("market_data:AAPL")] == [5]


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


# ---------------------------------------------------------------- many streams in one frame


def market_data(*symbols: str) -> list[dict[str, Any]]:
    return [{"stream_type": "market_data", "symbol": symbol} for symbol in symbols]


def calls_beyond_a_ping(wired: Wired, connection_id: str, frame: dict[str, Any]) -> tuple[dict[str, Any], Counter]:
    """The reply to `frame`, and the DynamoDB calls it made beyond those every frame makes (a ping's)."""
    calls = DynamoCalls(wired.store._raw)
    wired.clock.advance(1)  # each frame in a rate-budget second of its own
    wired.send(connection_id, {"action": "ping"})
    per_frame = Counter(calls.calls)
    calls.reset()
    wired.clock.advance(1)
    reply = wired.send(connection_id, frame)
    beyond = Counter(calls.calls)
    beyond.subtract(per_frame)
    return reply, +beyond


def put_head(wired: Wired, stream: str, message_type: MessageType, seq_count: int) -> str:
    """Sequence `seq_count` events on `stream` as fan-out does; returns the last message."""
    message = ""
    for index in range(seq_count):
        _, message, _ = wired.store.sequence_event(
            stream,
            f"{stream}-e{index}",
            lambda seq: ServerMessage(message_type=message_type, payload={"n": seq}, stream=stream, seq=seq).to_json(),
        )
    return message


def test_fifty_streams_take_one_transaction_and_one_batch_read(wired: Wired) -> None:
    # GIVEN a premium client (50 subscriptions)
    wired.connect("a")
    keys = [f"market_data:S{i:03d}" for i in range(50)]
    # WHEN it subscribes to 50 streams in one frame
    reply, calls = calls_beyond_a_ping(wired, "a", subscribe(*market_data(*(f"S{i:03d}" for i in range(50)))))
    # THEN the subscription costs one TransactWriteItems and one BatchGetItem, nothing per stream
    assert calls == Counter({"TransactWriteItems": 1, "BatchGetItem": 1})
    # AND every stream is subscribed, counted and answered, in the frame's order
    assert reply["message_type"] == "subscribe", reply
    assert reply["payload"]["streams"] == keys
    assert reply["payload"]["last_seq"] == dict.fromkeys(keys, 0)
    assert sub_count(wired, "a") == 50
    assert [s.stream_key for s in wired.store.subscriptions_of("a")] == keys


def test_one_stream_costs_one_transaction_and_one_read(wired: Wired) -> None:
    wired.connect("a")
    reply, calls = calls_beyond_a_ping(wired, "a", subscribe(*market_data("AAPL")))
    assert reply["payload"]["streams"] == ["market_data:AAPL"]
    assert calls == Counter({"TransactWriteItems": 1, "BatchGetItem": 1})


def test_a_batch_answers_each_streams_head_and_last_value(wired: Wired) -> None:
    # GIVEN market_data:AAPL at seq 3 and predictions:AAPL at seq 2; market_data:MSFT has seen nothing
    last_aapl = put_head(wired, "market_data:AAPL", MessageType.MARKET_DATA, 3)
    put_head(wired, "predictions:AAPL", MessageType.PREDICTION, 2)
    wired.connect("a")
    # WHEN a client subscribes to them and to a wildcard in one frame
    frame = subscribe(
        *market_data("AAPL"),
        {"stream_type": "predictions", "symbol": "AAPL"},
        *market_data("MSFT"),
        {"stream_type": "alerts"},
    )
    wired.send("a", frame)
    # THEN the reply places each single-symbol stream (just before a market data last value, which follows it)
    [reply, last_value] = received(wired, "a")
    assert reply["payload"]["last_seq"] == {"market_data:AAPL": 2, "predictions:AAPL": 2, "market_data:MSFT": 0}
    assert last_value == json.loads(last_aapl)


def test_already_subscribed_streams_in_a_batch_take_the_new_interval_and_filters(wired: Wired) -> None:
    # GIVEN a client subscribed to AAPL with a volume filter
    wired.connect("a")
    wired.send("a", subscribe({"stream_type": "market_data", "symbol": "AAPL", "filters": {"min_volume": "10"}}))
    # WHEN one frame names AAPL again with other filters and an interval, and two new streams
    reply = wired.send(
        "a",
        subscribe(
            {"stream_type": "market_data", "symbol": "AAPL", "interval": 5, "filters": {"min_volume": "99"}},
            {"stream_type": "predictions", "symbol": "TSLA", "filters": {"min_confidence": "0.7"}},
            {"stream_type": "alerts"},
        ),
    )
    # THEN all three are answered, AAPL once more with its new interval and filters, counted once
    assert reply["payload"]["streams"] == ["market_data:AAPL", "predictions:TSLA", "alerts:*"]
    [aapl] = wired.store.subscribers("market_data:AAPL")
    assert (aapl.interval, aapl.filters) == (5, {"min_volume": "99"})
    [tsla] = wired.store.subscribers("predictions:TSLA")
    assert tsla.filters == {"min_confidence": "0.7"}
    assert sub_count(wired, "a") == 3


@pytest.mark.parametrize(
    ("level", "before", "frame", "message", "subscribed", "count"),
    [
        (
            "free",
            market_data("S0", "S1", "S2"),
            market_data("W", "X", "Y", "Z"),
            "Subscription limit of 5 reached for the free level;"
            " subscribed to market_data:W, market_data:X before the limit",
            ["market_data:S0", "market_data:S1", "market_data:S2", "market_data:W", "market_data:X"],
            5,
        ),
        (
            "basic",
            [],
            [{"stream_type": "alerts"}, {"stream_type": "market_data"}, {"stream_type": "predictions"}],
            "Subscription limit of 20 reached for the basic level (predictions:* counts as 10);"
            " subscribed to alerts:*, market_data:* before the limit",
            ["alerts:*", "market_data:*"],
            11,
        ),
        (
            "free",
            market_data("S0", "S1", "S2", "S3", "S4"),
            market_data("S0", "W"),
            "Subscription limit of 5 reached for the free level; subscribed to market_data:S0 before the limit",
            ["market_data:S0", "market_data:S1", "market_data:S2", "market_data:S3", "market_data:S4"],
            5,
        ),
    ],
    ids=["symbols", "wildcard-costs", "renewal-then-limit"],
)
def test_the_limit_reached_inside_a_batch_answers_and_keeps_what_one_stream_at_a_time_did(
    wired: Wired,
    level: str,
    before: list[dict[str, Any]],
    frame: list[dict[str, Any]],
    message: str,
    subscribed: list[str],
    count: int,
) -> None:
    # GIVEN a client with some of its subscriptions taken
    wired.connect("a", level=level)
    if before:
        assert wired.send("a", subscribe(*before))["message_type"] == "subscribe"
    # WHEN one frame asks for more than the rest of its budget
    reply = wired.send("a", subscribe(*frame, request_id="many"))
    # THEN SUBSCRIPTION_LIMIT, naming the streams of this frame added before the limit, in its order
    assert error_code(reply) == "SUBSCRIPTION_LIMIT", reply
    assert reply["payload"]["message"] == message
    assert reply["request_id"] == "many"
    # AND those streams stay subscribed and counted, and nothing after them was written
    assert [s.stream_key for s in wired.store.subscriptions_of("a")] == sorted(subscribed)
    assert sub_count(wired, "a") == count


def test_a_connection_gone_during_a_batch_subscribe_gets_no_answer_and_keeps_nothing(wired: Wired) -> None:
    # GIVEN a client whose connection row is deleted (its $disconnect ran) as its subscribe transaction is sent
    wired.connect("a")
    client = wired.store._raw
    transactions: list[int] = []

    def disconnect_first(params: dict[str, Any], **_: Any) -> None:
        if not transactions:
            client.delete_item(TableName=wired.settings.connections_table, Key={"pk": {"S": "a"}})
        transactions.append(len(params["TransactItems"]))

    client.meta.events.register("before-parameter-build.dynamodb.TransactWriteItems", disconnect_first)
    before = len(received(wired, "a"))
    # WHEN it subscribes to three streams
    wired.service.handle_frame("a", json.dumps(subscribe(*market_data("A", "B", "C"))))
    # THEN the batch (3 rows and the counter) was refused, the first stream alone found the connection gone,
    # nothing was written and nobody was answered
    assert transactions == [4, 2]
    assert wired.store.subscriptions_of("a") == []
    assert len(received(wired, "a")) == before


def test_more_streams_than_a_transaction_holds_go_in_consecutive_transactions(
    wired: Wired, aws: dict[str, Any]
) -> None:
    # GIVEN an enterprise level allowing 200 subscriptions (the frame caps a subscribe at 50 today; the
    # service must not rely on that), and a subscribe of 150 streams
    limits = wired.settings.limits.model_copy(update={"subscriptions_enterprise": 200})
    roomy = Wired(wired.settings.model_copy(update={"limits": limits}), aws["dynamodb"], wired.clock)
    roomy.connect("a", level="enterprise")
    connection = roomy.store.get_connection("a")
    assert connection is not None
    symbols = [f"S{i:03d}" for i in range(150)]
    keys = [f"market_data:{symbol}" for symbol in symbols]
    frame = Subscribe.model_construct(
        action="subscribe",
        streams=[stream_spec({"stream_type": StreamType.MARKET_DATA, "symbol": symbol}) for symbol in symbols],
        request_id=None,
    )
    calls = DynamoCalls(roomy.store._raw)
    # WHEN the service subscribes them
    roomy.service._subscribe(ActionContext(connection, None), frame)
    # THEN two transactions (99 and 51 streams) and two batch reads (100 and 50 heads), all in order
    assert SUBSCRIPTIONS_PER_TRANSACTION == 99
    assert calls.calls == Counter({"TransactWriteItems": 2, "BatchGetItem": 2})
    reply: dict[str, Any] = roomy.gateway.messages("a")[-1]
    assert reply["payload"]["streams"] == keys
    assert len(reply["payload"]["last_seq"]) == 150
    assert sub_count(roomy, "a") == 150


# ---------------------------------------------------------------- the store's batch calls


def subscription(key: str, connection_id: str = "a") -> Subscription:
    return Subscription(stream_key=key, connection_id=connection_id, user_id="user-1")


@pytest.mark.parametrize(
    ("batch", "problem"),
    [
        ([], "at least one"),
        ([(subscription(f"alerts:{i}"), 1) for i in range(SUBSCRIPTIONS_PER_TRANSACTION + 1)], "one transaction"),
        ([(subscription("alerts:*"), 1), (subscription("alerts:*"), 1)], "twice"),
        ([(subscription("alerts:*"), 1), (subscription("predictions:*", "b"), 10)], "one connection"),
    ],
    ids=["empty", "too-many", "a-stream-twice", "two-connections"],
)
def test_a_batch_the_store_cannot_write_in_one_transaction_is_refused_plainly(
    wired: Wired, batch: list[tuple[Subscription, int]], problem: str
) -> None:
    wired.connect("a")
    wired.connect("b", user_id="user-2")
    with pytest.raises(ValueError, match=problem):
        wired.store.add_subscriptions(batch, limit=500)
    assert wired.store.subscriptions_of("a") == [] and wired.store.subscriptions_of("b") == []
    assert sub_count(wired, "a") == 0


def test_a_refused_batch_writes_nothing(wired: Wired) -> None:
    # GIVEN a free client (5) with one stream
    wired.connect("a", level="free")
    assert wired.store.add_subscriptions([(subscription("alerts:*"), 1), (subscription("performance:*"), 1)], 5)
    # WHEN a batch names a stream it has, or would pass the limit
    already = [(subscription("alerts:*"), 1), (subscription("market_regime:*"), 1)]
    too_many = [(subscription(f"market_data:S{i}"), 1) for i in range(4)]
    # THEN each is refused as a whole, and the rows and count are as before
    assert wired.store.add_subscriptions(already, 5) is False
    assert wired.store.add_subscriptions(too_many, 5) is False
    assert [s.stream_key for s in wired.store.subscriptions_of("a")] == ["alerts:*", "performance:*"]
    assert sub_count(wired, "a") == 2
    # AND a batch that fits exactly is taken
    assert wired.store.add_subscriptions(too_many[:3], 5) is True
    assert sub_count(wired, "a") == 5


def test_stream_heads_read_many_streams_as_stream_head_reads_one(wired: Wired) -> None:
    # GIVEN two streams with history and 148 without, 150 in all (more than one BatchGetItem holds)
    put_head(wired, "market_data:AAPL", MessageType.MARKET_DATA, 2)
    put_head(wired, "alerts:AAPL", MessageType.ALERT, 1)
    streams = ["market_data:AAPL", *(f"market_data:S{i:03d}" for i in range(148)), "alerts:AAPL"]
    calls = DynamoCalls(wired.store._raw)
    # WHEN their heads are read together, one named twice
    heads = wired.store.stream_heads([*streams, "market_data:AAPL"])
    # THEN each is what stream_head says, in the order asked, from two BatchGetItem calls
    assert calls.calls == Counter({"BatchGetItem": 2})
    assert list(heads) == streams
    assert heads == {stream: wired.store.stream_head(stream) for stream in streams}
    assert heads["market_data:AAPL"].last_seq == 2 and heads["market_data:AAPL"].last_message
    assert heads["market_data:S000"] == StreamHead("market_data:S000")
    assert wired.store.stream_heads([]) == {}
