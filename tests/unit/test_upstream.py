"""Upstream event models: validation at the edge, streams, data rooms and subscription filters."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from quanttrade_ws.protocol import MessageType
from quanttrade_ws.upstream import (
    Alert,
    InvalidEvent,
    MarketData,
    MarketRegime,
    Performance,
    Prediction,
    SystemStatus,
    parse_upstream_event,
)
from tests.integration import events_builder as eb

# ---------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("event", "model", "message_type"),
    [
        (eb.market_data(), MarketData, MessageType.MARKET_DATA),
        (eb.prediction(), Prediction, MessageType.PREDICTION),
        (eb.alert(), Alert, MessageType.ALERT),
        (eb.performance(), Performance, MessageType.PERFORMANCE),
        (eb.regime(), MarketRegime, MessageType.MARKET_REGIME),
        (eb.system_status(), SystemStatus, MessageType.SYSTEM_STATUS),
    ],
)
def test_every_detail_type_parses_to_its_model_and_message_type(event, model, message_type):
    # GIVEN an EventBridge event of each detail-type the upstream services send
    # WHEN it is parsed at the edge
    parsed = parse_upstream_event(event)
    # THEN it becomes its detail model, keeps the EventBridge id, and maps to its server message type
    assert isinstance(parsed.detail, model)
    assert parsed.id == event["id"]
    assert parsed.detail.message_type is message_type


def test_a_replayed_event_says_which_replay_it_came_from():
    # GIVEN an event EventBridge replays from an archive
    event = {**eb.alert(), "replay-name": "incident-2026-03"}
    # WHEN it is parsed THEN the envelope keeps the replay's name
    assert parse_upstream_event(event).replay_name == "incident-2026-03"


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda e: e.update({"detail-type": "Gossip"}), "unknown detail-type"),
        (lambda e: e.pop("detail-type"), "unknown detail-type"),
        (lambda e: e["detail"].update({"price": -1}), "price"),
        (lambda e: e["detail"].update({"price": "NaN"}), "price"),
        (lambda e: e["detail"].update({"volume": -5}), "volume"),
        (lambda e: e["detail"].pop("symbol"), "symbol"),
        (lambda e: e["detail"].update({"symbol": "AAPL; DROP TABLE"}), "symbol"),
        (lambda e: e["detail"].update({"timestamp": "yesterday"}), "timestamp"),
        (lambda e: e.update({"detail": None}), "MarketData"),
        (lambda e: e.pop("id"), "id"),
        (lambda e: e.pop("time"), "time"),
        # the rest of EventBridge's envelope (Powertools' EventBridgeModel) is required too
        (lambda e: e.pop("account"), "account"),
        (lambda e: e.update({"resources": "arn"}), "resources"),
    ],
)
def test_invalid_events_are_rejected_with_a_reason(mutate, reason):
    # GIVEN a market data event with one thing wrong
    event = eb.market_data()
    mutate(event)
    # WHEN it is parsed THEN it is rejected as InvalidEvent naming what is wrong
    with pytest.raises(InvalidEvent, match=reason):
        parse_upstream_event(event)


def test_a_non_object_body_is_invalid():
    # GIVEN a JSON array where an event should be  WHEN parsed  THEN InvalidEvent, not a crash
    with pytest.raises(InvalidEvent):
        parse_upstream_event([1, 2, 3])  # type: ignore[arg-type]


def test_prediction_confidence_outside_zero_to_one_is_invalid():
    # GIVEN a prediction with confidence 1.5  WHEN parsed  THEN it is rejected
    with pytest.raises(InvalidEvent, match="confidence"):
        parse_upstream_event(eb.prediction(confidence=1.5))


def test_event_time_is_the_detail_timestamp_else_the_eventbridge_time():
    # GIVEN a market data tick stamped 2 seconds before EventBridge saw it, and an alert with no timestamp
    tick = eb.market_data(at=1_800_000_000.0)
    tick["time"] = eb.iso(1_800_000_002.0)
    alert = eb.alert(at=1_800_000_005.0)
    # WHEN parsed
    # THEN delivery lag is measured from the upstream service's own timestamp where there is one
    assert parse_upstream_event(tick).event_time == datetime.fromtimestamp(1_800_000_000.0, UTC)
    assert parse_upstream_event(alert).event_time == datetime.fromtimestamp(1_800_000_005.0, UTC)


@pytest.mark.parametrize(
    ("event", "stamp"),
    [
        (eb.alert, "2027-01-15T08:00:05.000Z"),
        (eb.performance, "2027-01-15T08:00:05+00:00"),
        (eb.regime, "2027-01-15T08:00:05"),
        (eb.system_status, "2027-01-15 08:00:05.000000Z"),
    ],
)
def test_a_timestamp_sent_as_text_by_a_type_that_does_not_declare_one_is_read_as_a_time(event, stamp):
    # GIVEN an event of a type without a declared timestamp that sends one anyway, as text
    sent = event(at=1_800_000_000.0)
    sent["detail"]["timestamp"] = stamp
    parsed = parse_upstream_event(sent)
    # THEN it is kept as sent, and it is the event's time
    assert parsed.detail.timestamp == stamp
    assert parsed.event_time == datetime(2027, 1, 15, 8, 0, 5, tzinfo=UTC)


@pytest.mark.parametrize("stamp", ["soon", 1_800_000_009, None, ["2027-01-15"]])
def test_a_timestamp_that_is_no_time_falls_back_to_the_eventbridge_time(stamp):
    # GIVEN an alert whose extra timestamp is not a time
    sent = eb.alert(at=1_800_000_005.0)
    sent["detail"]["timestamp"] = stamp
    parsed = parse_upstream_event(sent)
    # THEN the event's time is EventBridge's
    assert parsed.event_time == datetime.fromtimestamp(1_800_000_005.0, UTC)


@pytest.mark.parametrize("symbol", [5, {"name": "AAPL"}, "AAPL", "x" * 5000])
def test_a_symbol_sent_by_a_type_that_does_not_declare_one_is_data_not_a_stream(symbol):
    # GIVEN a system status (its stream names no symbol) that sends a `symbol` anyway
    sent = eb.system_status()
    sent["detail"]["symbol"] = symbol
    parsed = parse_upstream_event(sent)
    # THEN it stays in the payload as sent, and the event goes to the type's one stream
    assert parsed.detail.symbol == symbol
    assert parsed.detail.stream == "system_status"


def test_a_naive_timestamp_is_taken_as_utc():
    # GIVEN a tick whose timestamp has no zone
    event = eb.market_data()
    event["detail"]["timestamp"] = "2027-01-15T08:00:00"
    # WHEN parsed THEN the event time is that instant in UTC (lag arithmetic needs an aware time)
    assert parse_upstream_event(event).event_time == datetime(2027, 1, 15, 8, 0, tzinfo=UTC)


# ---------------------------------------------------------------- streams and rooms


@pytest.mark.parametrize(
    ("event", "stream", "room"),
    [
        (eb.market_data("aapl"), "market_data:AAPL", "market_data_AAPL"),
        (eb.prediction("msft"), "predictions:MSFT", "predictions_MSFT"),
        (eb.alert(), "alerts", "alerts"),
        (eb.alert(symbol="TSLA"), "alerts:TSLA", "alerts"),
        (eb.performance(), "performance", None),
        (eb.performance(strategy="momo"), "performance:MOMO", None),
        (eb.regime(market="SPX"), "market_regime:SPX", None),
        (eb.system_status(), "system_status", None),
    ],
)
def test_stream_and_data_room_of_each_event(event, stream, room):
    # GIVEN an upstream event  WHEN parsed
    detail = parse_upstream_event(event).detail
    # THEN its stream (upper-cased symbol, as subscription keys are) and its data room are as the spec names them
    assert detail.stream == stream
    assert detail.data_room == room


# ---------------------------------------------------------------- filters


def _detail(event):
    return parse_upstream_event(event).detail


@pytest.mark.parametrize(
    ("severity", "minimum", "passes"),
    [
        ("low", "medium", False),
        ("medium", "medium", True),
        ("high", "medium", True),
        ("critical", "critical", True),
        ("high", "critical", False),
    ],
)
def test_alert_min_severity(severity, minimum, passes):
    # GIVEN an alert of some severity and a subscription with min_severity
    # WHEN the filter is applied  THEN only alerts at or above the minimum pass
    assert _detail(eb.alert(severity=severity)).passes({"min_severity": minimum}) is passes


def test_alert_type_filter():
    # GIVEN a price alert  WHEN filtered by alert_type  THEN only the matching type passes
    detail = _detail(eb.alert(alert_type="price"))
    assert detail.passes({"alert_type": "price"})
    assert not detail.passes({"alert_type": "risk"})


@pytest.mark.parametrize(
    ("confidence", "direction", "filters", "passes"),
    [
        (0.8, "up", {"min_confidence": "0.7"}, True),
        (0.6, "up", {"min_confidence": "0.7"}, False),
        (0.7, "up", {"min_confidence": "0.7"}, True),
        (0.9, "down", {"direction": "up"}, False),
        (0.9, "up", {"direction": "up", "min_confidence": "0.95"}, False),
        (0.96, "up", {"direction": "up", "min_confidence": "0.95"}, True),
    ],
)
def test_prediction_min_confidence_and_direction(confidence, direction, filters, passes):
    # GIVEN a prediction  WHEN filtered by confidence and direction  THEN both must hold
    assert _detail(eb.prediction(confidence=confidence, direction=direction)).passes(filters) is passes


@pytest.mark.parametrize(("volume", "passes"), [(999, False), (1000, True), (5000, True)])
def test_market_data_min_volume(volume, passes):
    # GIVEN a tick  WHEN filtered by min_volume 1000  THEN smaller ticks are dropped
    assert _detail(eb.market_data(volume=volume)).passes({"min_volume": "1000"}) is passes


def test_regime_min_confidence():
    # GIVEN regimes of confidence 0.5 and 0.9  WHEN filtered by min_confidence 0.8  THEN only 0.9 passes
    assert not _detail(eb.regime(confidence=0.5)).passes({"min_confidence": "0.8"})
    assert _detail(eb.regime(confidence=0.9)).passes({"min_confidence": "0.8"})


def test_system_status_service_and_status():
    # GIVEN the pricing service degraded
    detail = _detail(eb.system_status(service="pricing", status="degraded"))
    # WHEN filtered by service and status  THEN every given filter must match
    assert detail.passes({"service": "pricing"})
    assert detail.passes({"service": "pricing", "status": "degraded"})
    assert not detail.passes({"service": "orders"})
    assert not detail.passes({"service": "pricing", "status": "down"})


def test_performance_metric_filter():
    # GIVEN a performance event with sharpe and drawdown
    detail = _detail(eb.performance(metrics={"sharpe": 1.2, "drawdown": 0.1}))
    # WHEN filtered by metric  THEN it passes only for a metric it carries
    assert detail.passes({"metric": "sharpe"})
    assert not detail.passes({"metric": "sortino"})


def test_no_filters_and_unknown_filters_pass():
    # GIVEN any event  WHEN the subscription has no filters or an unknown one (an old row)
    # THEN it passes: delivery is never blocked by a filter the model does not understand
    detail = _detail(eb.market_data(volume=1))
    assert detail.passes({})
    assert detail.passes({"colour": "blue"})
    assert detail.passes({"min_volume": "not-a-number"})


def _nested(levels: int) -> dict:
    value: dict = {}
    for _ in range(levels):
        value = {"level": value}
    return value


def test_a_detail_nested_within_reason_is_accepted():
    # GIVEN a tick carrying an order book nested 20 levels deep  WHEN parsed  THEN it is accepted
    event = eb.market_data()
    event["detail"]["book"] = _nested(20)
    assert parse_upstream_event(event).detail.stream == "market_data:AAPL"


def test_a_detail_nested_too_deep_to_render_is_invalid():
    # GIVEN a tick whose extra detail nests 300 levels (the serialiser fails near 255)
    event = eb.market_data()
    event["detail"]["book"] = _nested(300)
    # WHEN parsed  THEN it is invalid at the edge, not a failure later when the message is rendered
    with pytest.raises(InvalidEvent, match="nests deeper"):
        parse_upstream_event(event)
