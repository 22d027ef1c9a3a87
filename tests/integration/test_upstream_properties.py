"""Property tests: whatever an upstream service puts in an event, the fan-out delivers it or dead-letters it.

Random and malformed events of every detail-type go through EventFanOut.process_events
on moto DynamoDB, one SQS record at a time, to a subscriber of every stream type. An
event is never a failed record (that would hold its FIFO group and, after five
receives, the events behind it): it reaches the subscriber exactly once, or it goes
to the dead-letter queue with its body and a reason, never both. Fields a type does
not declare are data; declared fields with values of the wrong kind are refused.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from quanttrade_ws.protocol import StreamType
from quanttrade_ws.upstream import DETAILS_BY_TYPE
from tests.conftest import Wired
from tests.integration import events_builder as eb

EXAMPLES = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
SUBSCRIBER = "every-stream"

VALID_EVENTS = {
    "MarketData": eb.market_data,
    "Prediction": eb.prediction,
    "Alert": lambda: eb.alert(symbol="AAPL"),
    "Performance": lambda: eb.performance(strategy="momentum"),
    "MarketRegime": eb.regime,
    "SystemStatus": eb.system_status,
}
# Names every type might be sent: the fields that choose a stream, a time or a room, and ones the server writes.
SHARED_NAMES = ("symbol", "timestamp", "strategy", "market", "room", "stream", "seq", "event_id", "source", "filters")
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
    | st.sampled_from(["", "*", "a:b", "AAPL", "ß", "2027-01-15T08:00:05.000Z", "2027-13-45"])
    | st.integers(1000, 5000).map(lambda size: "x" * size)
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
REMOVE = object()  # a change that deletes the field
ODD_VALUES = (
    0,
    7,
    -1.5,
    True,
    False,
    None,
    "",
    "*",
    "a:b",
    "ß",
    "2027-01-15T08:00:05.000Z",
    "x" * 3000,
    [],
    [1],
    {},
    {"a": 1},
)
BATCH_SIZE = 10  # the events queue's


def known_names(detail_type: str) -> list[str]:
    """The fields a detail-type declares, and the shared names."""
    return sorted({*DETAILS_BY_TYPE[detail_type].model_fields, *SHARED_NAMES})


def detail_changes(detail_type: str) -> st.SearchStrategy[list[tuple[str, Any]]]:
    """Up to four fields set to any JSON value or removed: mostly the type's own fields and the shared names."""
    known = st.sampled_from(known_names(detail_type))
    names = st.one_of(known, known, known, st.text(max_size=12))  # three names in four are known ones
    return st.lists(st.tuples(names, json_values | st.just(REMOVE)), min_size=1, max_size=4)


@pytest.fixture
def subscribed(wired: Wired) -> Wired:
    wired.connect(SUBSCRIBER, expires_in=10**8)
    wired.send(SUBSCRIBER, {"action": "subscribe", "streams": [{"stream_type": stream.value} for stream in StreamType]})
    return wired


def _data_messages(wired: Wired) -> list[dict[str, Any]]:
    """The data messages (with a stream and a seq) the subscriber received, batch frames unpacked."""
    found = []
    for raw in wired.gateway.sent[SUBSCRIBER]:
        message = json.loads(raw)
        inner = message["payload"]["messages"] if message.get("message_type") == "batch" else [message]
        found += [m for m in inner if m.get("seq") is not None]
    return found


def _fanned_out(wired: Wired, bodies: list[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Fan out the bodies as one SQS batch, check no record failed; the DLQ letters and data messages it made."""
    wired.clock.now += 1  # a fresh audience read and interval state per batch, as between real ticks
    dlq = wired.sender.sent.setdefault(wired.settings.events_dlq_url, [])
    letters_before, data_before = len(dlq), len(_data_messages(wired))
    response = wired.fanout.process_events([eb.sqs_record(body) for body in bodies])  # must not raise
    assert response == {"batchItemFailures": []}, "a failed record holds its FIFO group"
    return [json.loads(letter.body) for letter in dlq[letters_before:]], _data_messages(wired)[data_before:]


def delivered_or_dead_lettered(wired: Wired, body: str, record: bool = True) -> str:
    """Fan out one record; check it reached the subscriber once, or the DLQ once, and failed nothing.

    Returns what became of it. `record`: count the outcome in Hypothesis' statistics
    (`--hypothesis-show-statistics` shows how many random events each outcome got).
    """
    letters, data = _fanned_out(wired, [body])
    if letters:
        assert len(letters) == 1 and not data, (letters, data)
        assert letters[0]["body"] == body
        assert isinstance(letters[0]["reason"], str) and letters[0]["reason"]
        outcome = "dead-lettered"
    else:
        assert len(data) == 1, f"expected the event once, got {len(data)} messages"
        assert isinstance(data[0]["stream"], str) and data[0]["stream"]
        outcome = f"delivered on {data[0]['stream'].split(':')[0]}"
    if record:
        event(outcome)
    return outcome


def delivered_or_dead_lettered_together(wired: Wired, bodies: list[str]) -> None:
    """Fan out events as one SQS batch (each with its own EventBridge id): each reached the subscriber once
    or the DLQ once, and no record failed."""
    letters, data = _fanned_out(wired, bodies)
    letter_counts = Counter(letter["body"] for letter in letters)
    deliveries = Counter(message["payload"]["event_id"] for message in data)
    for body in bodies:
        outcomes = (letter_counts[body], deliveries[json.loads(body)["id"]])
        assert outcomes in ((1, 0), (0, 1)), f"{body[:300]}: dead-lettered, delivered {outcomes}"


# ---------------------------------------------------------------- the properties


@pytest.mark.parametrize("detail_type", sorted(VALID_EVENTS))
def test_every_field_set_to_every_odd_value_is_delivered_or_dead_lettered(subscribed: Wired, detail_type: str) -> None:
    # Every pairing, not a sample: the values that broke routing once (a number where text was expected,
    # text where a time was) are among them, for the type's own fields and for fields it does not declare.
    bodies = []
    for name in known_names(detail_type):
        for value in ODD_VALUES:
            upstream = VALID_EVENTS[detail_type]()
            upstream["detail"][name] = value
            bodies.append(json.dumps(upstream))
    for start in range(0, len(bodies), BATCH_SIZE):
        delivered_or_dead_lettered_together(subscribed, bodies[start : start + BATCH_SIZE])


@pytest.mark.parametrize("detail_type", sorted(VALID_EVENTS))
@EXAMPLES
@given(data=st.data())
def test_any_change_to_a_detail_is_delivered_or_dead_lettered(
    subscribed: Wired, detail_type: str, data: st.DataObject
) -> None:
    upstream = VALID_EVENTS[detail_type]()
    for name, value in data.draw(detail_changes(detail_type)):
        if value is REMOVE:
            upstream["detail"].pop(name, None)
        else:
            upstream["detail"][name] = value
    delivered_or_dead_lettered(subscribed, json.dumps(upstream))


@EXAMPLES
@given(
    detail_type=st.sampled_from(sorted(VALID_EVENTS)),
    field=st.sampled_from(["id", "time", "source", "detail-type", "detail", "account", "region", "version"]),
    value=json_values | st.just(REMOVE),
)
def test_any_change_to_the_eventbridge_envelope_is_delivered_or_dead_lettered(
    subscribed: Wired, detail_type: str, field: str, value: Any
) -> None:
    upstream = VALID_EVENTS[detail_type]()
    if value is REMOVE:
        del upstream[field]
    else:
        upstream[field] = value
    delivered_or_dead_lettered(subscribed, json.dumps(upstream))


@EXAMPLES
@given(body=json_values.map(json.dumps) | st.text(max_size=200))
def test_any_body_is_delivered_or_dead_lettered(subscribed: Wired, body: str) -> None:
    delivered_or_dead_lettered(subscribed, body)


def test_the_valid_event_of_every_type_is_delivered_on_its_own_stream(subscribed: Wired) -> None:
    # The properties above tell a delivery from a dead letter: each type's valid event must be a delivery.
    outcomes = [
        delivered_or_dead_lettered(subscribed, json.dumps(make()), record=False) for make in VALID_EVENTS.values()
    ]
    assert outcomes == [
        f"delivered on {stream}"
        for stream in ("market_data", "predictions", "alerts", "performance", "market_regime", "system_status")
    ]
