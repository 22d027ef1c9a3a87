"""Fan-out on moto's DynamoDB: upstream events reach exactly the right clients, once, in order, fast.

Everything below runs the real EventFanOut and RealtimeService against the real tables;
only the Management API (InMemoryGateway) and SQS sends (InMemorySender) are fakes.
"""

from __future__ import annotations

import json
import time
import zlib
from typing import Any

import pytest

from quanttrade_ws import fanout as fanout_module
from quanttrade_ws.auth import ALL_PERMISSIONS
from quanttrade_ws.delivery_chunks import CHUNK_SHARDS
from quanttrade_ws.store.ports import JoinLimits
from tests.conftest import Wired
from tests.dynamo_calls import DynamoCalls
from tests.integration import events_builder as eb

T0 = 1_800_000_000.0  # the conftest Clock's start, and the builder's default event time


# ---------------------------------------------------------------- helpers


def _act(wired: Wired, connection_id: str, frame: dict[str, Any], answer: str) -> None:
    before = len(wired.gateway.messages(connection_id))
    wired.send(connection_id, frame)
    reply = wired.gateway.messages(connection_id)[before]  # a last value may follow the reply
    assert reply["message_type"] == answer, reply


def subscribe(wired: Wired, connection_id: str, *streams: dict[str, Any]) -> None:
    _act(wired, connection_id, {"action": "subscribe", "streams": list(streams)}, "subscribe")


def join(wired: Wired, connection_id: str, room: str) -> None:
    _act(wired, connection_id, {"action": "joinRoom", "room": room}, "join_room")


def data(wired: Wired, connection_id: str, stream: str | None = None) -> list[dict[str, Any]]:
    """The data messages (those with a stream and seq) a connection received, in arrival order."""
    return [
        m
        for m in wired.gateway.messages(connection_id)
        if m.get("seq") is not None and (stream is None or m.get("stream") == stream)
    ]


def seqs(wired: Wired, connection_id: str, stream: str | None = None) -> list[int]:
    return [int(m["seq"]) for m in data(wired, connection_id, stream)]


def publish(wired: Wired, *events: dict[str, Any]) -> dict[str, list[dict[str, str]]]:
    return wired.fanout.process_events(eb.records(*events))


def frames_since(wired: Wired, connection_id: str, start: int) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in wired.gateway.sent[connection_id][start:]]


AAPL = {"stream_type": "market_data", "symbol": "AAPL"}
MSFT = {"stream_type": "market_data", "symbol": "MSFT"}
ALL_MARKET_DATA = {"stream_type": "market_data"}


@pytest.fixture
def rewire(wired: Wired, aws: dict[str, Any]):
    """The same tables and clock, with other settings (chunk size, cache time, ...)."""

    def make(**overrides: Any) -> Wired:
        return Wired(wired.settings.model_copy(update=overrides), aws["dynamodb"], wired.clock)

    return make


# ---------------------------------------------------------------- routing


def test_a_system_status_that_sends_a_symbol_of_any_type_reaches_the_status_subscribers(wired: Wired):
    # GIVEN a subscriber of system status, and statuses carrying a `symbol` that type does not declare
    wired.connect("ops")
    subscribe(wired, "ops", {"stream_type": "system_status"})
    statuses = [eb.system_status(), eb.system_status()]
    statuses[0]["detail"]["symbol"] = 5
    statuses[1]["detail"]["symbol"] = "AAPL"
    # WHEN they are fanned out
    assert publish(wired, *statuses) == {"batchItemFailures": []}
    # THEN both arrive on the one system_status stream, each symbol as sent
    assert [(m["stream"], m["payload"]["symbol"]) for m in data(wired, "ops")] == [
        ("system_status", 5),
        ("system_status", "AAPL"),
    ]


def test_alerts_that_send_their_own_timestamp_as_text_are_delivered_in_order(wired: Wired):
    # GIVEN a subscriber of alerts, and upstream alerts that carry a timestamp the Alert type does not declare
    wired.connect("ops")
    subscribe(wired, "ops", {"stream_type": "alerts"})
    alerts = [eb.alert(), eb.alert(), eb.alert()]
    for alert, stamp in zip(alerts, ("2027-01-15T08:00:05.000Z", "not a time", 1_800_000_000), strict=True):
        alert["detail"]["timestamp"] = stamp
    # WHEN they are fanned out, in one batch and then one at a time
    assert publish(wired, *alerts[:2]) == {"batchItemFailures": []}
    assert publish(wired, alerts[2]) == {"batchItemFailures": []}
    # THEN each arrives once, in order, with its timestamp as sent, and no record failed
    assert [m["payload"]["timestamp"] for m in data(wired, "ops")] == [
        "2027-01-15T08:00:05.000Z",
        "not a time",
        1_800_000_000,
    ]
    assert seqs(wired, "ops") == [1, 2, 3]


def test_symbol_type_and_room_audiences_each_get_the_event_and_nobody_else(wired: Wired):
    # GIVEN a subscriber of market_data:AAPL, one of every market_data symbol, a member of the
    # market_data_AAPL data room, and bystanders on MSFT, on predictions:AAPL and in another room
    for cid in ("sym", "any", "room", "msft", "pred", "chat"):
        wired.connect(cid)
    subscribe(wired, "sym", AAPL)
    subscribe(wired, "any", ALL_MARKET_DATA)
    join(wired, "room", "market_data_AAPL")
    subscribe(wired, "msft", MSFT)
    subscribe(wired, "pred", {"stream_type": "predictions", "symbol": "AAPL"})
    join(wired, "chat", "lobby")

    # WHEN one AAPL tick is fanned out
    response = publish(wired, eb.market_data("AAPL", price=187.5))

    # THEN exactly the three audiences get it, with its stream, seq and the upstream payload
    assert response == {"batchItemFailures": []}
    for cid in ("sym", "any", "room"):
        [message] = data(wired, cid)
        assert message["message_type"] == "market_data"
        assert message["stream"] == "market_data:AAPL"
        assert message["seq"] == 1
        assert message["payload"]["price"] == 187.5
        assert message["source"] == "quanttrade.market-data"
    for cid in ("msft", "pred", "chat"):
        assert data(wired, cid) == []


def test_a_connection_matching_several_ways_gets_the_message_once(wired: Wired):
    # GIVEN one connection subscribed to AAPL, to every symbol, and member of the AAPL data room
    wired.connect("all-ways")
    subscribe(wired, "all-ways", AAPL, ALL_MARKET_DATA)
    join(wired, "all-ways", "market_data_AAPL")

    # WHEN one AAPL tick is fanned out
    publish(wired, eb.market_data("AAPL"))

    # THEN it arrives once
    assert seqs(wired, "all-ways") == [1]


@pytest.mark.parametrize(
    ("event", "room"),
    [
        (eb.prediction("NVDA"), "predictions_NVDA"),
        (eb.alert(severity="low"), "alerts"),
        (eb.alert(severity="low", symbol="NVDA"), "alerts"),
    ],
)
def test_prediction_and_alert_data_rooms_receive_their_events(wired: Wired, event, room):
    # GIVEN a member of the data room the event belongs to, and a member of an unrelated data room
    wired.connect("member")
    wired.connect("elsewhere")
    join(wired, "member", room)
    join(wired, "elsewhere", "predictions_AMD")
    # WHEN the event is fanned out
    publish(wired, event)
    # THEN the room member gets it and the other does not
    assert len(data(wired, "member")) == 1
    assert data(wired, "elsewhere") == []


def test_a_symbol_subscription_is_case_insensitive_like_the_stream(wired: Wired):
    # GIVEN a subscriber of "aapl" in lower case
    wired.connect("lower")
    subscribe(wired, "lower", {"stream_type": "market_data", "symbol": "aapl"})
    # WHEN an event for "AAPL" arrives
    publish(wired, eb.market_data("AAPL"))
    # THEN it reaches the subscriber
    assert seqs(wired, "lower", "market_data:AAPL") == [1]


# ---------------------------------------------------------------- filters and intervals


@pytest.mark.parametrize(
    ("spec", "wanted", "unwanted"),
    [
        (
            {"stream_type": "alerts", "filters": {"min_severity": "high"}},
            eb.alert(severity="critical"),
            eb.alert(severity="medium"),
        ),
        (
            {"stream_type": "predictions", "symbol": "AAPL", "filters": {"min_confidence": "0.75", "direction": "up"}},
            eb.prediction(confidence=0.9, direction="up"),
            eb.prediction(confidence=0.9, direction="down"),
        ),
        (
            {"stream_type": "predictions", "symbol": "AAPL", "filters": {"min_confidence": "0.75"}},
            eb.prediction(confidence=0.8),
            eb.prediction(confidence=0.5),
        ),
        (
            {"stream_type": "market_data", "symbol": "AAPL", "filters": {"min_volume": "5000"}},
            eb.market_data(volume=10_000),
            eb.market_data(volume=100),
        ),
        (
            {"stream_type": "market_regime", "filters": {"min_confidence": "0.6"}},
            eb.regime(confidence=0.9),
            eb.regime(confidence=0.3),
        ),
        (
            {"stream_type": "system_status", "filters": {"service": "pricing", "status": "down"}},
            eb.system_status(service="pricing", status="down"),
            eb.system_status(service="pricing", status="degraded"),
        ),
        (
            {"stream_type": "performance", "filters": {"metric": "sharpe"}},
            eb.performance(metrics={"sharpe": 2.0}),
            eb.performance(metrics={"drawdown": 0.2}),
        ),
    ],
)
def test_subscription_filters_decide_per_subscriber(wired: Wired, spec, wanted, unwanted):
    # GIVEN a filtered subscriber and an unfiltered one on the same stream
    wired.connect("filtered")
    wired.connect("unfiltered")
    subscribe(wired, "filtered", spec)
    subscribe(wired, "unfiltered", {k: v for k, v in spec.items() if k != "filters"})

    # WHEN an event the filter rejects and one it accepts are fanned out in one batch
    publish(wired, unwanted, wanted)

    # THEN the filtered subscriber gets only the accepted one, the unfiltered one gets both
    [got] = data(wired, "filtered")
    assert got["payload"]["event_id"] == wanted["id"]
    assert [m["payload"]["event_id"] for m in data(wired, "unfiltered")] == [unwanted["id"], wanted["id"]]


def test_a_filtered_symbol_subscriber_still_gets_what_its_type_subscription_lets_through(wired: Wired):
    # GIVEN a connection on AAPL with min_volume 5000 and also on every market_data symbol unfiltered
    wired.connect("both")
    subscribe(wired, "both", {**AAPL, "filters": {"min_volume": "5000"}}, ALL_MARKET_DATA)
    # WHEN a small AAPL tick arrives
    publish(wired, eb.market_data(volume=10))
    # THEN the unfiltered subscription delivers it, once
    assert seqs(wired, "both") == [1]


def test_interval_allows_at_most_one_update_per_interval(wired: Wired):
    # GIVEN a subscriber wanting AAPL at most every 5 seconds, and one wanting every tick
    wired.connect("slow")
    wired.connect("fast")
    subscribe(wired, "slow", {**AAPL, "interval": 5})
    subscribe(wired, "fast", AAPL)

    # WHEN a tick arrives every second for 12 seconds
    for second in range(12):
        wired.clock.now = T0 + second
        publish(wired, eb.market_data(price=100 + second, at=T0 + second))

    # THEN the slow subscriber got the ticks of seconds 0, 5 and 10; the fast one all twelve
    assert [m["payload"]["price"] for m in data(wired, "slow")] == [100, 105, 110]
    assert seqs(wired, "fast") == list(range(1, 13))


def test_interval_throttles_each_subscription_separately(wired: Wired):
    # GIVEN one connection with a 10 second interval on AAPL and a 1 second interval on MSFT
    wired.connect("mixed")
    subscribe(wired, "mixed", {**AAPL, "interval": 10}, {**MSFT, "interval": 1})

    # WHEN both tick every second for three seconds
    for second in range(3):
        wired.clock.now = T0 + second
        publish(wired, eb.market_data("AAPL", at=T0 + second), eb.market_data("MSFT", at=T0 + second))

    # THEN AAPL arrived once, MSFT each second
    assert seqs(wired, "mixed", "market_data:AAPL") == [1]
    assert seqs(wired, "mixed", "market_data:MSFT") == [1, 2, 3]


def test_interval_state_stays_bounded_as_connections_come_and_go(wired: Wired, monkeypatch: pytest.MonkeyPatch):
    # GIVEN a warm fan-out that keeps the interval state of at most ten subscriptions
    monkeypatch.setattr(fanout_module, "INTERVAL_STATE_ENTRIES", 10)
    # AND eight connections that had a tick with a one-second interval, then left
    gone = [f"gone{n}" for n in range(8)]
    for cid in gone:
        wired.connect(cid, user_id=cid)
        subscribe(wired, cid, {**AAPL, "interval": 1})
    wired.clock.now = T0
    publish(wired, eb.market_data(price=100, at=T0))
    for cid in gone:
        wired.send(cid, {"action": "unsubscribe", "streams": [AAPL]})
    # WHEN three more subscribe with a minute's interval and get a tick
    live = [f"live{n}" for n in range(3)]
    for cid in live:
        wired.connect(cid, user_id=cid)
        subscribe(wired, cid, {**AAPL, "interval": 60})
    wired.clock.now = T0 + 5
    publish(wired, eb.market_data(price=105, at=T0 + 5))
    # THEN past ten entries, those whose interval has passed made room: the state is the live ones'
    assert sorted(wired.fanout._last_sent) == [(cid, "market_data:AAPL") for cid in live]
    # AND they are still throttled: each got the last value on subscribing, then the tick of +5 s, not +6 s
    wired.clock.now = T0 + 6
    publish(wired, eb.market_data(price=106, at=T0 + 6))
    assert [[m["payload"]["price"] for m in data(wired, cid)] for cid in live] == [[100, 105]] * 3


# ---------------------------------------------------------------- sequence numbers and order


def test_seq_increases_by_one_per_stream_without_gaps_and_in_order(wired: Wired):
    # GIVEN a subscriber of every market_data symbol
    wired.connect("watcher")
    subscribe(wired, "watcher", ALL_MARKET_DATA)

    # WHEN AAPL and MSFT ticks interleave over three batches
    for batch in range(3):
        publish(
            wired,
            eb.market_data("AAPL", price=100 + batch),
            eb.market_data("MSFT", price=200 + batch),
            eb.market_data("AAPL", price=100.5 + batch),
        )

    # THEN each stream counts 1, 2, 3, ... on its own, in the order the events left the queue
    assert seqs(wired, "watcher", "market_data:AAPL") == [1, 2, 3, 4, 5, 6]
    assert seqs(wired, "watcher", "market_data:MSFT") == [1, 2, 3]
    assert [m["payload"]["price"] for m in data(wired, "watcher", "market_data:AAPL")] == [
        100,
        100.5,
        101,
        101.5,
        102,
        102.5,
    ]


def test_a_redelivered_event_keeps_its_seq_and_message(wired: Wired):
    # GIVEN an AAPL event that was fanned out once, followed by another one
    wired.connect("sub")
    subscribe(wired, "sub", AAPL)
    first = eb.market_data(price=101)
    publish(wired, first, eb.market_data(price=102))

    # WHEN SQS redelivers the first event (same EventBridge id, new receive)
    publish(wired, first)

    # THEN the copy carries the same seq and is byte-for-byte the same message, and the stream did not advance
    messages = data(wired, "sub")
    assert [m["seq"] for m in messages] == [1, 2, 1]
    assert messages[2] == messages[0]
    assert wired.store.stream_head("market_data:AAPL").last_seq == 2
    # AND a later event continues the sequence where it was
    publish(wired, eb.market_data(price=103))
    assert seqs(wired, "sub")[-1] == 3


def test_the_same_event_twice_in_one_batch_gets_one_seq(wired: Wired):
    # GIVEN one event that appears twice in the same batch (EventBridge delivers at least once)
    wired.connect("sub")
    subscribe(wired, "sub", AAPL)
    event = eb.market_data()
    # WHEN the batch is fanned out
    publish(wired, event, event)
    # THEN both copies carry seq 1 and the stream is at 1
    assert seqs(wired, "sub") == [1, 1]
    assert wired.store.stream_head("market_data:AAPL").last_seq == 1


# ---------------------------------------------------------------- last value


def test_a_new_market_data_symbol_subscriber_gets_the_last_value_at_once(wired: Wired):
    # GIVEN two AAPL ticks already fanned out
    publish(wired, eb.market_data(price=100), eb.market_data(price=101))

    # WHEN a client subscribes to AAPL
    wired.connect("late")
    subscribe(wired, "late", AAPL)

    # THEN right after the subscribe reply it holds the latest tick with its stream and seq
    messages = wired.gateway.messages("late")
    assert messages[0]["message_type"] == "subscribe"
    assert messages[1]["payload"]["price"] == 101
    assert (messages[1]["stream"], messages[1]["seq"]) == ("market_data:AAPL", 2)


@pytest.mark.parametrize(
    "spec",
    [ALL_MARKET_DATA, MSFT, {"stream_type": "predictions", "symbol": "AAPL"}],
)
def test_no_last_value_without_a_symbol_or_for_other_streams(wired: Wired, spec):
    # GIVEN AAPL market data and an AAPL prediction already fanned out
    publish(wired, eb.market_data(), eb.prediction())
    # WHEN a client subscribes to all symbols, to a symbol with no data yet, or to predictions
    wired.connect("late")
    subscribe(wired, "late", spec)
    # THEN it gets only the subscribe reply
    assert [m["message_type"] for m in wired.gateway.messages("late")] == ["subscribe"]


# ---------------------------------------------------------------- batching


def test_several_messages_for_one_connection_go_out_as_one_batch_frame(wired: Wired):
    # GIVEN a client on every market_data symbol and on alerts
    wired.connect("busy")
    subscribe(wired, "busy", ALL_MARKET_DATA, {"stream_type": "alerts"})
    before = len(wired.gateway.sent["busy"])

    # WHEN one SQS batch holds three events for it
    publish(wired, eb.market_data("AAPL"), eb.market_data("MSFT"), eb.alert())

    # THEN one frame was posted to it: a `batch` message holding the three in order
    [frame] = frames_since(wired, "busy", before)
    assert frame["message_type"] == "batch"
    assert [(m["stream"], m["seq"]) for m in frame["payload"]["messages"]] == [
        ("market_data:AAPL", 1),
        ("market_data:MSFT", 1),
        ("alerts", 1),
    ]
    assert wired.metrics.totals["Delivered"] == 1


def test_latest_only_is_the_subscribers_choice_stored_with_its_subscription_and_applied(wired: Wired):
    # GIVEN a client subscribed to AAPL latest-only and one subscribed to every AAPL tick
    wired.connect("board")
    wired.connect("chart")
    subscribe(wired, "board", {**AAPL, "latest_only": True})
    subscribe(wired, "chart", AAPL)
    assert {s.connection_id: s.latest_only for s in wired.store.subscribers("market_data:AAPL")} == {
        "board": True,
        "chart": False,
    }
    assert [s.latest_only for s in wired.store.subscriptions_of("board")] == [True]

    # WHEN one SQS batch holds three AAPL ticks
    assert publish(wired, *(eb.market_data(price=p) for p in (1.0, 2.0, 3.0))) == {"batchItemFailures": []}

    # THEN the board got the newest only (a gap it reads like an interval's), the chart all three
    assert [(m["seq"], m["payload"]["price"]) for m in data(wired, "board")] == [(3, 3.0)]
    assert seqs(wired, "chart") == [1, 2, 3]


def test_a_single_message_goes_out_as_itself(wired: Wired):
    # GIVEN a subscriber  WHEN one event arrives
    wired.connect("one")
    subscribe(wired, "one", AAPL)
    before = len(wired.gateway.sent["one"])
    publish(wired, eb.market_data())
    # THEN it is posted as the data message, not wrapped in a batch
    [frame] = frames_since(wired, "one", before)
    assert frame["message_type"] == "market_data"


# ---------------------------------------------------------------- gone connections (410)


def test_a_gone_connection_is_removed_with_everything_it_owns_and_the_batch_carries_on(wired: Wired):
    # GIVEN two connections with the same subscriptions and rooms, and a third on alerts;
    # the first one's socket is already closed (the gateway answers 410)
    for cid in ("gone", "stays", "alerted"):
        wired.connect(cid)
    for cid in ("gone", "stays"):
        subscribe(wired, cid, AAPL, MSFT, ALL_MARKET_DATA)
        join(wired, cid, "market_data_AAPL")
        join(wired, cid, "lobby")
    subscribe(wired, "alerted", {"stream_type": "alerts"})
    wired.gateway.gone.add("gone")

    # WHEN a batch with an AAPL tick and an alert is fanned out
    response = publish(wired, eb.market_data("AAPL"), eb.alert())

    # THEN nothing fails, the live connections got their messages
    assert response == {"batchItemFailures": []}
    assert seqs(wired, "stays") == [1]
    assert seqs(wired, "alerted") == [1]
    # AND the gone connection and everything it owned is removed, and only that
    store = wired.store
    assert store.get_connection("gone") is None
    assert store.subscriptions_of("gone") == []
    assert store.rooms_of("gone") == []
    assert "gone" not in store.room_members("lobby")
    assert "gone" not in [s.connection_id for s in store.subscribers("market_data:*")]
    assert store.get_connection("stays") is not None
    assert [s.stream_key for s in store.subscriptions_of("stays")] == [
        "market_data:*",
        "market_data:AAPL",
        "market_data:MSFT",
    ]
    assert store.rooms_of("stays") == ["lobby", "market_data_AAPL"]
    assert store.room_members("lobby") == ["stays"]
    assert _room_count(wired, "lobby") == 1  # the gone member's place is free again
    assert _room_count(wired, "market_data_AAPL") == 1
    assert wired.metrics.totals["Gone"] == 1


def _room_count(wired: Wired, room: str) -> int:
    item = wired.store._db.get_item(
        TableName=wired.settings.rooms_table, Key={"room": {"S": room}, "member_id": {"S": "#meta"}}
    )["Item"]
    return int(item["member_count"]["N"])


def test_a_gone_connection_leaves_the_cached_audience_at_once(wired: Wired):
    # GIVEN a gone connection that was just removed by a fan-out (the audience is cached for 0.5 s)
    wired.connect("gone")
    wired.connect("stays")
    for cid in ("gone", "stays"):
        subscribe(wired, cid, AAPL)
    wired.gateway.gone.add("gone")
    publish(wired, eb.market_data())
    assert wired.metrics.totals["Gone"] == 1

    # WHEN the next tick arrives within the cache time
    publish(wired, eb.market_data())

    # THEN no post is wasted on the removed connection, and the live one got both
    assert wired.metrics.totals["Gone"] == 1
    assert seqs(wired, "stays") == [1, 2]


# ---------------------------------------------------------------- large audiences


def test_a_large_audience_is_split_into_delivery_chunks_that_reach_everyone(wired: Wired, rewire):
    # GIVEN chunks of 3 connections and an AAPL event with 10 distinct subscribers (one matching three ways)
    small = rewire(chunk_size=3)
    audience = [f"c{i:02d}" for i in range(10)]
    for cid in audience:
        small.connect(cid)
        subscribe(small, cid, AAPL)
    subscribe(small, "c00", ALL_MARKET_DATA)
    join(small, "c00", "market_data_AAPL")

    # WHEN the event is fanned out
    response = small.fanout.process_events(eb.records(eb.market_data(price=123)))

    # THEN nothing was posted directly; the audience went to the delivery queue in chunks of at most 3,
    # each connection in exactly one chunk, grouped by a stable shard of its id so its order holds
    assert response == {"batchItemFailures": []}
    assert all(data(small, cid) == [] for cid in audience)
    chunks = small.sender.sent[small.settings.delivery_queue_url]
    listed = [cid for c in chunks for cid in json.loads(c.body)["connections"]]
    assert sorted(listed) == audience
    assert all(len(json.loads(c.body)["connections"]) <= 3 for c in chunks)
    for chunk in chunks:
        for cid in json.loads(chunk.body)["connections"]:
            assert chunk.group_id == f"market_data:AAPL#{zlib.crc32(cid.encode()) % CHUNK_SHARDS}"
    assert small.metrics.totals["DeliveryChunks"] == len(chunks)

    # WHEN the delivery function processes those chunks
    delivered = small.fanout.process_chunks([eb.delivery_record(c) for c in chunks])

    # THEN each of the 10 got the message once, with its stream and seq
    assert delivered == {"batchItemFailures": []}
    for cid in audience:
        [message] = data(small, cid)
        assert (message["stream"], message["seq"], message["payload"]["price"]) == ("market_data:AAPL", 1, 123)
    assert small.metrics.totals["Delivered"] == 10
    # the upstream time travels in the chunk; one lag value per event, now that the chunks go out in one post_many
    assert small.metrics.samples["DeliveryLag"] == [0.0]  # published at the clock's time, so no lag


def test_an_audience_at_the_chunk_size_is_posted_directly(wired: Wired, rewire):
    # GIVEN chunks of 3 and exactly 3 subscribers  WHEN an event arrives
    small = rewire(chunk_size=3)
    for cid in ("a", "b", "c"):
        small.connect(cid)
        subscribe(small, cid, AAPL)
    small.fanout.process_events(eb.records(eb.market_data()))
    # THEN it is posted straight away, no chunk
    assert small.sender.sent.get(small.settings.delivery_queue_url) is None
    assert all(seqs(small, cid) == [1] for cid in ("a", "b", "c"))


def test_a_gone_connection_in_a_chunk_is_removed_and_the_chunk_is_acknowledged(wired: Wired, rewire):
    # GIVEN a 4-subscriber audience in chunks of 3, one of them gone
    small = rewire(chunk_size=3)
    for cid in ("a", "b", "c", "d"):
        small.connect(cid)
        subscribe(small, cid, AAPL)
    small.gateway.gone.add("b")
    small.fanout.process_events(eb.records(eb.market_data()))
    chunks = small.sender.sent[small.settings.delivery_queue_url]

    # WHEN the chunks are processed
    response = small.fanout.process_chunks([eb.delivery_record(c) for c in chunks])

    # THEN no chunk fails, the gone connection is removed, the rest delivered
    assert response == {"batchItemFailures": []}
    assert small.store.get_connection("b") is None
    assert small.store.subscriptions_of("b") == []
    assert [seqs(small, cid) for cid in ("a", "c", "d")] == [[1], [1], [1]]
    assert small.metrics.totals["Gone"] == 1


# ---------------------------------------------------------------- hot streams


def test_a_hot_stream_queries_each_subscriber_key_once_per_cache_period(wired: Wired, aws):
    # GIVEN subscribers on AAPL, on all market data and in the AAPL data room
    for cid in ("sym", "any", "room"):
        wired.connect(cid)
    subscribe(wired, "sym", AAPL)
    subscribe(wired, "any", ALL_MARKET_DATA)
    join(wired, "room", "market_data_AAPL")
    calls = DynamoCalls(aws["dynamodb"])

    # WHEN 100 ticks arrive in batches of 10 within 0.4 seconds (less than the 0.5 s cache time)
    for batch in range(10):
        wired.clock.now = T0 + batch * 0.04
        publish(wired, *[eb.market_data(price=100 + batch + i / 100) for i in range(10)])

    # THEN each key was Queried once, and every subscriber got all 100 ticks
    settings = wired.settings
    assert calls.queries == {
        f"{settings.subscriptions_table}/market_data:AAPL": 1,
        f"{settings.subscriptions_table}/market_data:*": 1,
        f"{settings.rooms_table}/market_data_AAPL": 1,
    }
    for cid in ("sym", "any", "room"):
        assert seqs(wired, cid) == list(range(1, 101))


def test_a_new_subscriber_gets_data_within_one_second(wired: Wired):
    # GIVEN a hot AAPL stream whose audience is cached
    wired.connect("early")
    subscribe(wired, "early", AAPL)
    publish(wired, eb.market_data())

    # WHEN a new client subscribes and ticks keep coming
    wired.connect("new")
    subscribe(wired, "new", AAPL)
    first_tick = len(data(wired, "new"))  # the last value sent on subscribe
    wired.clock.now = T0 + 0.1
    publish(wired, eb.market_data())
    within_cache = len(data(wired, "new"))
    wired.clock.now = T0 + 0.6  # past the 0.5 s cache time, well within one second
    publish(wired, eb.market_data())

    # THEN it receives live ticks once the cache time has passed (at most 0.5 s after subscribing)
    assert first_tick == 1 and within_cache == 1
    assert seqs(wired, "new") == [1, 3]


def test_an_unsubscribed_client_stops_getting_data_once_the_cache_time_has_passed(wired: Wired):
    # GIVEN a subscriber on a hot AAPL stream
    wired.connect("leaver")
    subscribe(wired, "leaver", AAPL)
    publish(wired, eb.market_data())

    # WHEN it unsubscribes and ticks come 0.6 s and 1.2 s later
    reply = wired.send("leaver", {"action": "unsubscribe", "streams": [AAPL]})
    wired.clock.now = T0 + 0.6
    publish(wired, eb.market_data())
    wired.clock.now = T0 + 1.2
    publish(wired, eb.market_data())

    # THEN it got only the tick from before
    assert reply["payload"]["streams"] == ["market_data:AAPL"]
    assert seqs(wired, "leaver") == [1]


def test_a_batch_of_new_events_is_sequenced_with_one_read_and_one_write(wired: Wired, aws):
    # GIVEN a subscriber of all market data, and AAPL already one tick in
    wired.connect("any")
    subscribe(wired, "any", ALL_MARKET_DATA)
    publish(wired, eb.market_data(price=1))
    calls = DynamoCalls(aws["dynamodb"])

    # WHEN a batch of ten new ticks for AAPL and MSFT, interleaved, is fanned out
    ticks = [eb.market_data("AAPL" if i % 2 else "MSFT", price=10 + i) for i in range(10)]
    publish(wired, *ticks)

    # THEN the whole batch took its places with one BatchGetItem and one TransactWriteItems, and each
    # stream's seqs follow the batch's order on from its head
    assert calls.calls["BatchGetItem"] == 1 and calls.calls["TransactWriteItems"] == 1
    assert calls.calls["GetItem"] == 0
    assert [(m["payload"]["price"], m["seq"]) for m in data(wired, "any", "market_data:AAPL")] == [
        (1, 1),
        (11, 2),
        (13, 3),
        (15, 4),
        (17, 5),
        (19, 6),
    ]
    assert seqs(wired, "any", "market_data:MSFT") == [1, 2, 3, 4, 5]
    assert [e.seq for e in wired.store.history_after("market_data:MSFT", 0, 10)] == [1, 2, 3, 4, 5]
    assert wired.store.stream_head("market_data:AAPL").last_seq == 6


def test_a_batch_of_one_new_event_is_sequenced_with_one_read_and_one_write(wired: Wired, aws):
    # GIVEN a subscriber of AAPL, its stream one tick in (a symbol's message group often hands over one event)
    wired.connect("sub")
    subscribe(wired, "sub", AAPL)
    publish(wired, eb.market_data(price=1))
    calls = DynamoCalls(aws["dynamodb"])

    # WHEN one new tick is fanned out alone
    publish(wired, eb.market_data(price=2))

    # THEN it took its place with one BatchGetItem (its marker and its head) and one TransactWriteItems,
    # not two GetItems before the write
    assert calls.calls["BatchGetItem"] == 1 and calls.calls["TransactWriteItems"] == 1
    assert calls.calls["GetItem"] == 0
    assert [(m["payload"]["price"], m["seq"]) for m in data(wired, "sub")] == [(1, 1), (2, 2)]


def test_a_redelivered_event_in_a_batch_keeps_its_seq_and_the_new_ones_follow(wired: Wired):
    # GIVEN a subscriber of AAPL, and a tick that was sequenced and delivered once already
    wired.connect("sub")
    subscribe(wired, "sub", AAPL)
    seen = eb.market_data(price=1)
    publish(wired, seen)

    # WHEN it comes again in a batch with two new ticks, one of them twice
    new = eb.market_data(price=2)
    publish(wired, seen, new, new, eb.market_data(price=3))

    # THEN the copies carry the seqs they were first given (clients drop them by (stream, seq)),
    # and the new ticks take the next places with no gap
    assert [(m["payload"]["price"], m["seq"]) for m in data(wired, "sub")] == [(1, 1), (1, 1), (2, 2), (2, 2), (3, 3)]
    assert [e.seq for e in wired.store.history_after("market_data:AAPL", 0, 10)] == [1, 2, 3]


def test_dynamodb_work_per_event_does_not_grow_with_unrelated_connections(wired: Wired, aws, rewire):
    # GIVEN no subscriber cache (so each event reads its audience) and 10 AAPL subscribers
    uncached = rewire(subscriber_cache_seconds=0)
    for i in range(10):
        uncached.connect(f"sub{i}")
        uncached.store.add_subscription(_subscription("market_data:AAPL", f"sub{i}"), limit=50)
    calls = DynamoCalls(aws["dynamodb"])

    def work_for_one_event() -> tuple[dict[str, int], int]:
        calls.reset()
        uncached.fanout.process_events(eb.records(eb.market_data()))
        return dict(calls.calls), calls.items_read

    work_for_one_event()  # the stream's first event (no head item yet) is not typical
    alone = work_for_one_event()

    # WHEN 200 connections that do not care about AAPL are added: other symbols, every prediction,
    # other data rooms and chat rooms
    for i in range(200):
        cid = f"other{i:03d}"
        uncached.connect(cid, user_id=cid)
        key = ["market_data:MSFT", "predictions:*", "market_data:TSLA", "alerts:*"][i % 4]
        uncached.store.add_subscription(_subscription(key, cid), limit=50)
        if i % 10 == 0:
            uncached.store.join_room(f"room{i % 3}", cid, "u", JoinLimits(capacity=1000, room_limit=10))
    crowded = work_for_one_event()

    # THEN one AAPL event costs exactly the same DynamoDB calls and items read, and is not a Scan
    assert crowded == alone
    assert "Scan" not in crowded[0]
    assert alone[0]["Query"] >= 2 and alone[1] >= 10  # the audience really was read both times
    assert all(seqs(uncached, f"sub{i}") == [1, 2, 3] for i in range(10))


def _subscription(key: str, connection_id: str):
    from quanttrade_ws.models import Subscription

    return Subscription(stream_key=key, connection_id=connection_id, user_id="user-1")


# ---------------------------------------------------------------- metrics


def test_delivery_metrics_count_posts_and_lag_from_the_upstream_time(wired: Wired):
    # GIVEN two subscribers, one of them gone, and a tick stamped 250 ms before the fan-out runs
    wired.connect("live")
    wired.connect("gone")
    for cid in ("live", "gone"):
        subscribe(wired, cid, AAPL)
    wired.gateway.gone.add("gone")
    wired.clock.now = T0 + 0.25

    # WHEN the tick is fanned out
    publish(wired, eb.market_data(at=T0))

    # THEN Delivered, Gone and DeliveryLag (ms, now minus the upstream timestamp) are recorded
    assert wired.metrics.totals["Delivered"] == 1
    assert wired.metrics.totals["Gone"] == 1
    assert wired.metrics.samples["DeliveryLag"] == [pytest.approx(250.0)]
    assert "DeliveryFailed" not in wired.metrics.totals


def test_a_subscriber_needs_the_read_permission(wired: Wired):
    # GIVEN a client without read:alerts  WHEN it subscribes to alerts
    wired.connect("nope", permissions=tuple(p for p in ALL_PERMISSIONS if p not in ("read:alerts", "admin")))
    reply = wired.send("nope", {"action": "subscribe", "streams": [{"stream_type": "alerts"}]})
    publish(wired, eb.alert())
    # THEN it is refused and gets no alert
    assert reply["payload"]["error_code"] == "FORBIDDEN"
    assert data(wired, "nope") == []


# ---------------------------------------------------------------- access-token expiry


def test_a_subscriber_whose_token_expired_gets_no_more_data(wired: Wired):
    # GIVEN a connection whose token expires in 8 s, subscribed to every symbol and in a data room,
    # beside one whose token is good for an hour
    wired.connect("short", user_id="short-lived", expires_in=8)
    wired.connect("long", user_id="long-lived")
    for cid in ("short", "long"):
        subscribe(wired, cid, ALL_MARKET_DATA)
        join(wired, cid, "market_data_MSFT")
    publish(wired, eb.market_data("AAPL"))
    assert len(data(wired, "short")) == 1
    # WHEN its token has expired (it sent nothing since) and more events come
    wired.clock.advance(9)
    publish(wired, eb.market_data("AAPL"), eb.market_data("MSFT"))
    # THEN it gets nothing more, from its subscription or its data room, while the other gets both
    assert len(data(wired, "short")) == 1
    assert [m["stream"] for m in data(wired, "long")] == ["market_data:AAPL", "market_data:AAPL", "market_data:MSFT"]


def test_a_refreshed_token_keeps_the_data_coming_past_the_old_expiry(wired: Wired):
    # GIVEN a subscriber (in a data room too) whose token expires in 30 s,
    # on the wall clock (refresh verifies a real JWT)
    wired.clock.now = time.time()
    wired.connect("c1", expires_in=30)
    subscribe(wired, "c1", ALL_MARKET_DATA)
    join(wired, "c1", "market_data_MSFT")
    # WHEN it refreshes with a token good for an hour, and the old expiry passes
    assert wired.send("c1", {"action": "refresh", "token": wired.token(expires_in=3600)})["message_type"] == "refresh"
    wired.clock.advance(60)
    publish(wired, eb.market_data("AAPL", at=wired.clock.now), eb.market_data("MSFT", at=wired.clock.now))
    # THEN it still gets data through both
    assert sorted(m["stream"] for m in data(wired, "c1")) == ["market_data:AAPL", "market_data:MSFT"]
