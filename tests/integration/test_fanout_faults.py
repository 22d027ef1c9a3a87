"""Fan-out when things go wrong: failed posts, failed queue sends, DynamoDB errors, poison events.

The rule under test: a record is acknowledged only when each of its messages was
delivered, deliberately dropped, or handed to a durable queue; everything else is
reported in batchItemFailures, keeping FIFO order per message group.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from botocore.exceptions import ClientError

from local.fakes import InMemoryGateway
from quanttrade_ws.connection_gateway import DeliveryReport, Post
from tests.conftest import Wired
from tests.integration import events_builder as eb
from tests.integration.test_fanout import AAPL, ALL_MARKET_DATA, data, seqs, subscribe

# ---------------------------------------------------------------- helpers


class DynamoOutage:
    """Makes chosen DynamoDB calls fail like the service does under stress, via a botocore hook.

    InternalServerError is one the store retries: a failure meant to reach the fan-out must
    last through the store's attempts."""

    def __init__(self, client: Any) -> None:
        self.rules: list[tuple[str, str, int]] = []  # (operation, text in the request, failures left)
        client.meta.events.register("before-parameter-build.dynamodb.*", self._maybe_fail)

    def fail(self, operation: str, when_request_contains: str, times: int = 1) -> None:
        self.rules.append((operation, when_request_contains, times))

    def _maybe_fail(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        for index, (operation, needle, left) in enumerate(self.rules):
            if left and model.name == operation and needle in json.dumps(params, default=str):
                self.rules[index] = (operation, needle, left - 1)
                raise ClientError(
                    {"Error": {"Code": "InternalServerError", "Message": "injected"}},
                    operation,
                )


class ScriptedGateway(InMemoryGateway):
    """The in-memory gateway, but the report says what the test wants (as ManagementApiGateway would
    after its own retries of 429s)."""

    def __init__(self, fail: set[str]) -> None:
        super().__init__()
        self.fail = fail

    def post_many(self, posts: Any, deadline: float | None = None) -> DeliveryReport:
        report = DeliveryReport()
        for post in posts:
            if post.connection_id in self.fail:
                report.failed.append(post)
                report.throttle_retries += 5
            elif self.post(post.connection_id, post.data):
                report.delivered.append(post)
            else:
                report.gone.append(post)
        return report


@pytest.fixture
def rewire(wired: Wired, aws: dict[str, Any]):
    """The same tables and clock, with other settings."""
    return lambda **overrides: Wired(wired.settings.model_copy(update=overrides), aws["dynamodb"], wired.clock)


@pytest.fixture
def outage(aws: dict[str, Any]) -> DynamoOutage:
    return DynamoOutage(aws["dynamodb"])


def failed_ids(response: dict[str, list[dict[str, str]]]) -> list[str]:
    return eb.failures(response)


def delivery_queue(wired: Wired) -> list[Any]:
    return wired.sender.sent.get(wired.settings.delivery_queue_url, [])


# ---------------------------------------------------------------- failed posts


def test_failed_posts_fail_their_records_and_redelivery_completes_the_stream(wired: Wired):
    # GIVEN two subscribers, one of which the Management API keeps failing (after its retries)
    wired.gateway = ScriptedGateway(fail={"flaky"})
    wired.fanout.gateway = wired.gateway
    wired.service.gateway = wired.gateway
    for cid in ("flaky", "fine"):
        wired.gateway.connect(cid)
        wired.service.connect(cid, _identity(wired))
        subscribe(wired, cid, AAPL)
    batch = eb.records(eb.market_data(), eb.market_data())

    # WHEN a batch with two ticks is fanned out
    response = wired.fanout.process_events(batch)

    # THEN both records fail (the second follows the first in its FIFO group); nothing is queued elsewhere
    assert failed_ids(response) == [r["messageId"] for r in batch]
    assert seqs(wired, "fine") == [1, 2]
    assert delivery_queue(wired) == []
    assert wired.metrics.totals["DeliveryFailed"] == 1
    assert wired.metrics.totals["Throttled"] == 5
    # AND once the connection recovers, SQS redelivers both in order with their seqs kept:
    # the flaky client gets the stream, the fine one duplicates it can drop by (stream, seq)
    wired.gateway.fail.clear()
    for record in batch:
        record["attributes"]["ApproximateReceiveCount"] = "2"
    assert failed_ids(wired.fanout.process_events(batch)) == []
    assert seqs(wired, "flaky") == [1, 2]
    assert seqs(wired, "fine") == [1, 2, 1, 2]


def test_a_redelivered_record_is_not_overtaken_by_the_next_one(wired: Wired):
    # GIVEN a subscriber whose post fails once, so its record is reported for redelivery
    wired.gateway = ScriptedGateway(fail={"c"})
    wired.fanout.gateway = wired.gateway
    wired.service.gateway = wired.gateway
    wired.gateway.connect("c")
    wired.service.connect("c", _identity(wired))
    subscribe(wired, "c", AAPL)
    [first] = eb.records(eb.market_data(price=1))
    assert failed_ids(wired.fanout.process_events([first])) == [first["messageId"]]

    # WHEN the connection recovers and SQS (FIFO) hands back the failed record before the next one
    wired.gateway.fail.clear()
    first["attributes"]["ApproximateReceiveCount"] = "2"
    wired.fanout.process_events([first, *eb.records(eb.market_data(price=2))])

    # THEN the client sees the stream in order
    assert seqs(wired, "c") == [1, 2]


def test_a_failed_post_fails_only_the_records_of_its_own_group(wired: Wired):
    # GIVEN a failing subscriber of AAPL only, a fine subscriber of everything, and SQS refusing sends
    wired.gateway = ScriptedGateway(fail={"flaky"})
    wired.fanout.gateway = wired.gateway
    wired.service.gateway = wired.gateway
    for cid in ("flaky", "fine"):
        wired.gateway.connect(cid)
        wired.service.connect(cid, _identity(wired))
    subscribe(wired, "flaky", AAPL)
    subscribe(wired, "fine", ALL_MARKET_DATA)
    wired.sender.failing = True
    batch = eb.records(eb.market_data("MSFT"), eb.market_data("AAPL"))
    batch[0]["attributes"]["MessageGroupId"] = "other-feed"

    # WHEN the batch is fanned out
    response = wired.fanout.process_events(batch)

    # THEN the AAPL record (whose message could not be delivered) is reported, the other group's MSFT one is not
    assert failed_ids(response) == [batch[1]["messageId"]]
    assert seqs(wired, "fine") == [1, 1]


def test_a_chunk_with_a_failed_post_is_reported_and_others_are_not(wired: Wired, rewire):
    # GIVEN a 5-subscriber audience in chunks of 3, one subscriber in the second chunk failing
    small = rewire(chunk_size=3)
    small.gateway = ScriptedGateway(fail={"d"})
    small.fanout.gateway = small.gateway
    small.service.gateway = small.gateway
    for cid in ("a", "b", "c", "d", "e"):
        small.gateway.connect(cid)
        small.service.connect(cid, _identity(small))
        subscribe(small, cid, AAPL)
    small.fanout.process_events(eb.records(eb.market_data()))
    records = [eb.delivery_record(c) for c in delivery_queue(small)]
    holding_d = [r for r in records if "d" in json.loads(r["body"])["connections"]]

    # WHEN the delivery function processes the chunks
    response = small.fanout.process_chunks(records)

    # THEN only the chunk holding the failing post is reported; everyone else has the message
    assert failed_ids(response) == [r["messageId"] for r in holding_d]
    assert [seqs(small, cid) for cid in ("a", "b", "c", "e")] == [[1], [1], [1], [1]]
    assert small.metrics.totals["DeliveryFailed"] == 1


def test_chunks_that_cannot_be_queued_fail_their_record(wired: Wired, rewire):
    # GIVEN a large audience and an SQS outage
    small = rewire(chunk_size=1)
    for cid in ("a", "b"):
        small.connect(cid)
        subscribe(small, cid, AAPL)
    small.sender.failing = True
    batch = eb.records(eb.market_data(), eb.market_data())

    # WHEN the events are fanned out
    response = small.fanout.process_events(batch)

    # THEN both records are reported (the second because it follows the first in its FIFO group)
    assert failed_ids(response) == [r["messageId"] for r in batch]


def test_a_malformed_delivery_chunk_is_dropped_not_retried_forever(wired: Wired):
    # GIVEN a delivery record whose body is not a chunk, beside a valid retry chunk
    wired.connect("c")
    bad = eb.sqs_record("not json", group="market_data:AAPL#0")
    good = eb.sqs_record(json.dumps({"data": '{"message_type":"alert"}', "connections": ["c"]}), group="retry#c")
    # WHEN processed
    response = wired.fanout.process_chunks([bad, good])
    # THEN nothing is reported, the bad one is counted, the good one delivered
    assert failed_ids(response) == []
    assert wired.metrics.totals["InvalidEvent"] == 1
    assert wired.gateway.messages("c") == [{"message_type": "alert"}]


def test_removing_a_gone_connection_may_fail_without_failing_the_batch(wired: Wired):
    # GIVEN a gone subscriber whose removal fails (DynamoDB trouble), and a live subscriber
    for cid in ("gone", "live"):
        wired.connect(cid)
        subscribe(wired, cid, AAPL)
    wired.gateway.gone.add("gone")

    def broken_removal(_connection_id: str) -> None:
        raise RuntimeError("DynamoDB unavailable")

    wired.fanout._remove_connection = broken_removal

    # WHEN a tick is fanned out
    response = wired.fanout.process_events(eb.records(eb.market_data()))

    # THEN the batch succeeds and the live subscriber has the tick (the sweeper removes the row later)
    assert failed_ids(response) == []
    assert seqs(wired, "live") == [1]


# ---------------------------------------------------------------- DynamoDB failures


def test_a_sequencing_failure_fails_its_record_and_the_rest_of_its_group_only(wired: Wired, outage: DynamoOutage):
    # GIVEN subscribers of all market data and of AAPL predictions, and DynamoDB failing
    # every write that records one AAPL event in its stream, through every one of the store's retries:
    # the batch's one transaction, and then that event's own
    wired.connect("md")
    wired.connect("pred")
    subscribe(wired, "md", ALL_MARKET_DATA)
    subscribe(wired, "pred", {"stream_type": "predictions", "symbol": "AAPL"})
    first, broken, after = eb.market_data(price=1), eb.market_data(price=2), eb.market_data("MSFT", price=3)
    prediction = eb.prediction()
    batch = eb.records(first, broken, prediction, after)
    outage.fail("TransactWriteItems", broken["id"], times=2 * wired.store.backoff.attempts)

    # WHEN the batch is fanned out
    response = wired.fanout.process_events(batch)

    # THEN the broken record and the later market-data record fail; the earlier one and the
    # prediction (another message group) are delivered
    assert failed_ids(response) == [batch[1]["messageId"], batch[3]["messageId"]]
    assert [m["payload"]["price"] for m in data(wired, "md")] == [1]
    assert seqs(wired, "pred") == [1]

    # WHEN SQS redelivers the two failed records, in order
    retry = wired.fanout.process_events([batch[1], batch[3]])

    # THEN they are delivered and AAPL's sequence has no gap: a client resuming after seq 1 loses nothing
    assert failed_ids(retry) == []
    assert seqs(wired, "md", "market_data:AAPL") == [1, 2]
    assert seqs(wired, "md", "market_data:MSFT") == [1]
    assert [e.seq for e in wired.store.history_after("market_data:AAPL", 0, 10)] == [1, 2]


def test_a_failure_reading_the_audience_fails_the_record_and_keeps_its_seq(wired: Wired, outage: DynamoOutage):
    # GIVEN an AAPL subscriber and a Query of AAPL's subscribers that fails once (past the store's retries)
    wired.connect("sub")
    subscribe(wired, "sub", AAPL)
    tick = eb.market_data()
    batch = eb.records(tick)
    outage.fail("Query", "market_data:AAPL", times=wired.store.backoff.attempts)

    # WHEN the tick is fanned out, fails, and is redelivered
    first = wired.fanout.process_events(batch)
    second = wired.fanout.process_events(batch)

    # THEN the first attempt reports the record, the second delivers it with the seq it got the first time
    assert failed_ids(first) == [batch[0]["messageId"]]
    assert failed_ids(second) == []
    assert seqs(wired, "sub") == [1]
    assert wired.store.stream_head("market_data:AAPL").last_seq == 1


def test_concurrent_writers_of_one_stream_never_share_a_seq(wired: Wired):
    # GIVEN an event whose sequencing is overtaken, between reading the stream head and writing,
    # by another writer sequencing a second event of the same stream
    store = wired.store
    overtaken = []

    def render_overtaken(seq: int) -> str:
        if not overtaken:
            overtaken.append(store.sequence_event("market_data:AAPL", "evt-other", lambda s: f"other {s}"))
        return f"mine {seq}"

    # WHEN both complete
    mine = store.sequence_event("market_data:AAPL", "evt-mine", render_overtaken)

    # THEN the other writer got seq 1, this one seq 2, and history holds each once
    assert overtaken == [(1, "other 1", True)]
    assert mine == (2, "mine 2", True)
    assert [(e.seq, e.message) for e in store.history_after("market_data:AAPL", 0, 10)] == [
        (1, "other 1"),
        (2, "mine 2"),
    ]
    assert store.stream_head("market_data:AAPL").last_message == "mine 2"


def test_two_writers_of_the_same_event_agree_on_one_seq(wired: Wired):
    # GIVEN an event being sequenced while a redelivered copy of it is sequenced concurrently
    store = wired.store
    copy = []

    def render_racing(seq: int) -> str:
        if not copy:
            copy.append(store.sequence_event("market_data:AAPL", "evt-1", lambda s: f"copy {s}"))
        return f"original {seq}"

    # WHEN both complete
    original = store.sequence_event("market_data:AAPL", "evt-1", render_racing)

    # THEN the loser returns the winner's seq and message, and the stream advanced once
    assert copy == [(1, "copy 1", True)]
    assert original == (1, "copy 1", False)
    assert store.stream_head("market_data:AAPL").last_seq == 1


def test_an_event_whose_history_entry_expired_is_sequenced_anew(wired: Wired):
    # GIVEN an event sequenced long ago whose history entry TTL already deleted (its marker not yet)
    store = wired.store
    assert store.sequence_event("market_data:AAPL", "evt-old", lambda s: f"first {s}") == (1, "first 1", True)
    store._db.delete_item(
        TableName=wired.settings.streams_table, Key={"stream": {"S": "market_data:AAPL"}, "seq": {"N": "1"}}
    )
    # WHEN the same event arrives again
    again = store.sequence_event("market_data:AAPL", "evt-old", lambda s: f"again {s}")
    # THEN it takes the next place in the stream rather than failing forever
    assert again == (2, "again 2", True)
    assert store.sequence_event("market_data:AAPL", "evt-old", lambda s: "unused") == (2, "again 2", False)


# ---------------------------------------------------------------- invalid events


def tick_with(**extra: object) -> str:
    """A market data tick whose detail carries more fields."""
    event = eb.market_data()
    return json.dumps({**event, "detail": {**event["detail"], **extra}})


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("{not json", "Expecting property name"),
        (json.dumps(eb.eventbridge_event("Gossip", {"x": 1})), "unknown detail-type"),
        (json.dumps({**eb.market_data(), "detail": {"symbol": "AAPL", "price": -3}}), "price"),
        # Fields it may not carry: the server sets event_id on every data message
        (tick_with(event_id="mine"), "set by the server"),
        # A message API Gateway would refuse (413) for every subscriber on every receive
        (tick_with(context="x" * 140_000), "a WebSocket message may carry"),
    ],
    ids=["not-json", "unknown-type", "invalid-field", "reserved-name", "over-the-message-size"],
)
def test_an_invalid_event_goes_to_the_dlq_and_its_neighbours_are_delivered(wired: Wired, body, reason):
    # GIVEN a subscriber and a batch with a poison event between two valid ticks, all in one group
    wired.connect("sub")
    subscribe(wired, "sub", AAPL)
    batch = eb.records(eb.market_data(price=1))
    batch.append(eb.sqs_record(body, group="market-data"))
    batch.append(eb.sqs_record(eb.market_data(price=2)))

    # WHEN the batch is fanned out
    response = wired.fanout.process_events(batch)

    # THEN nothing is reported, both valid ticks arrive in order, the poison one is in the DLQ with its reason
    assert failed_ids(response) == []
    assert [m["payload"]["price"] for m in data(wired, "sub")] == [1, 2]
    [letter] = wired.sender.sent[wired.settings.events_dlq_url]
    dead = json.loads(letter.body)
    assert reason in dead["reason"]
    assert dead["body"] == body
    assert wired.metrics.totals["InvalidEvent"] == 1


def test_an_invalid_event_that_cannot_be_dead_lettered_is_reported(wired: Wired):
    # GIVEN a poison event and an SQS outage
    batch = [eb.sqs_record("{}", group="market-data")]
    wired.sender.failing = True
    # WHEN it is fanned out
    response = wired.fanout.process_events(batch)
    # THEN it is reported rather than silently dropped
    assert failed_ids(response) == [batch[0]["messageId"]]


# ---------------------------------------------------------------- the real gateway's report shape


def test_every_post_lands_in_exactly_one_list_of_the_report(wired: Wired):
    # GIVEN the in-memory gateway with one live, one gone, one failing connection
    gateway = InMemoryGateway()
    gateway.connect("live", "gone", "failing")
    gateway.gone.add("gone")
    gateway.failing.add("failing")
    # WHEN posting to all three
    report = gateway.post_many([Post(c, b"{}") for c in ("live", "gone", "failing")])
    # THEN each post is in one list (the contract EventFanOut's accounting relies on)
    assert [p.connection_id for p in report.delivered] == ["live"]
    assert [p.connection_id for p in report.gone] == ["gone"]
    assert [p.connection_id for p in report.failed] == ["failing"]


def _identity(wired: Wired):
    from quanttrade_ws.auth import ALL_PERMISSIONS, Identity

    return Identity(
        user_id="user-1",
        permissions=frozenset(ALL_PERMISSIONS),
        subscription_level="premium",
        token_expires_at=int(wired.clock()) + 3600,
    )
