"""DynamoDB's own failures, injected with its real error responses in front of moto (which never produces them).

A `before-call` hook answers chosen requests with the JSON DynamoDB sends for a
cancelled transaction, throttling or an internal error, parsed by botocore's own
DynamoDB parser; everything else reaches moto. (`before-call`, not `before-send`:
moto's in-process mock also listens on `before-send`, and every listener there
runs, so moto would apply a write whose answer we replace.)

The store must retry what passes with time, raise what does not (the client
sees INTERNAL and a metric counts it), never read either as a limit, and keep
every counter equal to the rows it counts.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from botocore.compat import HTTPHeaders
from botocore.config import Config
from botocore.parsers import create_parser

from quanttrade_ws.config import Settings
from quanttrade_ws.protocol import subscription_cost
from quanttrade_ws.rooms import RoomKind, room_kind
from quanttrade_ws.store.ports import JoinLimits, Outcome
from quanttrade_ws.store.rooms import ROOM_META, SEAT_PREFIX
from quanttrade_ws.store.tables import CONDITION_FAILED
from tests.conftest import Clock, Wired
from tests.integration.conftest import error_code
from tests.provision import provision

TRANSACT = "TransactWriteItems"
CANCELLED = "com.amazonaws.dynamodb.v20120810#TransactionCanceledException"


def cancelled(*codes: str) -> tuple[int, dict[str, Any]]:
    """DynamoDB's answer to a cancelled transaction: one reason per item, in order."""
    reasons = [
        {"Code": code} if code == "None" else {"Code": code, "Message": f"{code} for this item"} for code in codes
    ]
    message = f"Transaction cancelled, please refer cancellation reasons for specific reasons [{', '.join(codes)}]"
    return 400, {"__type": CANCELLED, "CancellationReasons": reasons, "Message": message}


def error(code: str, status: int = 400, prefix: str = "com.amazonaws.dynamodb.v20120810") -> tuple[int, dict[str, Any]]:
    return status, {"__type": f"{prefix}#{code}", "message": f"{code} (injected)"}


THROTTLED = error("ThrottlingException", prefix="com.amazon.coral.availability")
THROUGHPUT = error("ProvisionedThroughputExceededException")
INTERNAL = error("InternalServerError", status=500)


class Inject:
    """A `before-call` hook on one operation: answers queued requests with DynamoDB's answer (an error, or a
    partial success such as unprocessed keys), parsed as botocore does."""

    def __init__(self, client: Any, operation: str) -> None:
        self.client = client
        self.operation = operation
        self.answers: list[Callable[[dict[str, Any]], tuple[int, dict[str, Any]] | None]] = []
        self.injected = 0
        self.passed = 0

    def next(self, count: int, answer: Callable[[dict[str, Any]], tuple[int, dict[str, Any]] | None]) -> Inject:
        """Answer the next `count` requests with `answer` (None lets one through to moto)."""
        self.answers.extend([answer] * count)
        return self

    def always(self, answer: Callable[[dict[str, Any]], tuple[int, dict[str, Any]] | None]) -> Inject:
        self.answers = [answer] * 10_000
        return self

    def __call__(self, model: Any, params: dict[str, Any], **_: Any) -> tuple[AWSResponse, dict[str, Any]] | None:
        answer = self.answers.pop(0)(json.loads(params["body"])) if self.answers else None
        if answer is None:
            self.passed += 1
            return None
        self.injected += 1
        status, body = answer
        headers = {"x-amzn-RequestId": uuid.uuid4().hex, "Content-Type": "application/x-amz-json-1.0"}
        response = {"status_code": status, "headers": headers, "body": json.dumps(body).encode()}
        parser = create_parser("json")
        parsed = parser.parse(response, model.output_shape)
        # As botocore's endpoint does: the error's modeled fields (CancellationReasons) from its own shape.
        error_shape = model.service_model.shape_for_error_code(parsed["Error"]["Code"]) if status >= 300 else None
        if error_shape is not None:
            parsed.update(parser.parse(response, error_shape))
        return AWSResponse(params["url"], status, HTTPHeaders.from_dict(headers), None), parsed

    def __enter__(self) -> Inject:
        self.client.meta.events.register(f"before-call.dynamodb.{self.operation}", self)
        return self

    def __exit__(self, *_: object) -> None:
        self.client.meta.events.unregister(f"before-call.dynamodb.{self.operation}", self)


@pytest.fixture
def wired(settings: Settings, aws: dict[str, Any]) -> Wired:
    """The service on moto through a client without botocore's retries: the store's own are under test."""
    provision(aws["dynamodb"], aws["sqs"], aws["events"], settings)
    client = boto3.client("dynamodb", region_name="us-east-1", config=Config(retries={"total_max_attempts": 1}))
    return Wired(settings, client, Clock())


def inject(wired: Wired, operation: str = TRANSACT) -> Inject:
    return Inject(wired.store._raw, operation)


def items(wired: Wired, table: str) -> list[dict[str, Any]]:
    return list(wired.store._raw.scan(TableName=table, ConsistentRead=True)["Items"])


def assert_counters_equal_rows(wired: Wired) -> None:
    """Every connection's sub_count (subscriptions by their cost, data rooms 1 each) and room_count, every
    room's member_count (one per user's seat), and every seat's connections equal the rows they count."""
    settings = wired.settings
    subscriptions = items(wired, settings.subscriptions_table)
    room_rows = items(wired, settings.rooms_table)
    members = [row for row in room_rows if not row["member_id"]["S"].startswith((ROOM_META, SEAT_PREFIX))]
    seats = [row for row in room_rows if row["member_id"]["S"].startswith(SEAT_PREFIX)]
    for row in items(wired, settings.connections_table):
        if row.get("kind", {}).get("S") != "connection":
            continue
        cid = row["pk"]["S"]
        subscribed = sum(
            subscription_cost(s["stream_key"]["S"]) for s in subscriptions if s["connection_id"]["S"] == cid
        )
        data_rooms = sum(m["connection_id"]["S"] == cid and room_kind(m["room"]["S"]) is RoomKind.DATA for m in members)
        assert int(row["sub_count"]["N"]) == subscribed + data_rooms, cid
        assert int(row["room_count"]["N"]) == sum(m["connection_id"]["S"] == cid for m in members), cid
    for meta in (row for row in room_rows if row["member_id"]["S"] == ROOM_META):
        room = meta["room"]["S"]
        assert int(meta["member_count"]["N"]) == sum(seat["room"]["S"] == room for seat in seats), room
    for seat in seats:
        holders = {
            m["connection_id"]["S"] for m in members if (m["room"], m["user_id"]) == (seat["room"], seat["user_id"])
        }
        assert set(seat["conns"]["SS"]) == holders, seat


def subscribe(*symbols: str) -> dict[str, Any]:
    return {"action": "subscribe", "streams": [{"stream_type": "market_data", "symbol": s} for s in symbols]}


RETRYABLE_REASONS = ["TransactionConflict", "ThrottlingError", "ProvisionedThroughputExceeded", "RequestLimitExceeded"]


@pytest.mark.parametrize("reason", RETRYABLE_REASONS)
def test_a_conflict_on_the_connection_row_is_retried_not_a_subscription_limit(wired: Wired, reason: str) -> None:
    # GIVEN a connection, and DynamoDB cancelling its next two subscribe transactions on the connection row
    # (the last item, after one Put per stream)
    wired.connect("c1", level="free")
    on_the_counter = lambda request: cancelled(*["None"] * (len(request["TransactItems"]) - 1), reason)  # noqa: E731
    with inject(wired).next(2, on_the_counter) as faults:
        # WHEN it subscribes
        reply = wired.send("c1", subscribe("AAPL", "MSFT"))
    # THEN it is subscribed (after retries), with no SUBSCRIPTION_LIMIT or silent GONE
    assert reply["message_type"] == "subscribe", reply
    assert reply["payload"]["streams"] == ["market_data:AAPL", "market_data:MSFT"]
    assert faults.injected == 2
    assert_counters_equal_rows(wired)


@pytest.mark.parametrize("reason", RETRYABLE_REASONS)
def test_a_conflict_on_a_busy_rooms_meta_item_is_retried_not_room_full(wired: Wired, reason: str) -> None:
    # GIVEN a room with a member, and DynamoDB cancelling the next three joins on the room's #meta item
    wired.connect("a")
    wired.connect("b")
    assert wired.send("a", {"action": "joinRoom", "room": "desk"})["message_type"] == "join_room"
    with inject(wired).next(3, lambda _: cancelled("None", reason, "None")) as faults:
        # WHEN another client joins
        reply = wired.send("b", {"action": "joinRoom", "room": "desk", "request_id": "j"})
    # THEN it is in, not ROOM_FULL, ROOM_LIMIT or silently dropped
    assert reply["message_type"] == "join_room", reply
    assert faults.injected == 3
    assert sorted(wired.store.room_members("desk")) == ["a", "b"]
    assert_counters_equal_rows(wired)


def test_a_conflict_while_unsubscribing_leaves_the_counter_equal_to_the_rows(wired: Wired) -> None:
    # GIVEN a free client at its limit of 5 subscriptions
    wired.connect("c1", level="free")
    assert wired.send("c1", subscribe("A", "B", "C", "D", "E"))["message_type"] == "subscribe"
    # WHEN two unsubscribes meet a transaction conflict on the connection row
    with inject(wired).next(2, lambda _: cancelled("None", "TransactionConflict")):
        reply = wired.send("c1", {"action": "unsubscribe", "streams": [{"stream_type": "market_data", "symbol": "A"}]})
    assert reply["payload"]["streams"] == ["market_data:A"]
    # THEN the count went down with the row, and the freed place can be taken
    assert_counters_equal_rows(wired)
    assert wired.send("c1", subscribe("F"))["message_type"] == "subscribe"
    assert_counters_equal_rows(wired)


def test_a_conflict_while_leaving_leaves_every_count_equal_to_the_rows(wired: Wired) -> None:
    # GIVEN two members of a room
    for cid in ("a", "b"):
        wired.connect(cid)
        wired.send(cid, {"action": "joinRoom", "room": "desk"})
    # WHEN one leaves and the transaction conflicts on the connection row, then on the room's #meta
    with (
        inject(wired)
        .next(1, lambda _: cancelled("None", "None", "TransactionConflict"))
        .next(1, lambda _: cancelled("None", "TransactionConflict", "None"))
    ):
        reply = wired.send("a", {"action": "leaveRoom", "room": "desk"})
    # THEN it left, and the room and the connection count what is there
    assert reply["message_type"] == "leave_room", reply
    assert wired.store.room_members("desk") == ["b"]
    assert_counters_equal_rows(wired)


def test_leaving_under_endless_conflicts_gives_up_after_a_bounded_number_of_tries(wired: Wired) -> None:
    # GIVEN a member, and a room whose every transaction conflicts
    wired.connect("a")
    wired.send("a", {"action": "joinRoom", "room": "desk"})
    with inject(wired).always(lambda _: cancelled("None", "TransactionConflict", "None")) as faults:
        # WHEN it leaves
        reply = wired.send("a", {"action": "leaveRoom", "room": "desk", "request_id": "l"})
    # THEN it gets INTERNAL after the store's bounded attempts (no unbounded recursion), counted by a metric
    assert error_code(reply) == "INTERNAL", reply
    assert faults.injected == wired.store.backoff.attempts
    assert wired.metrics.totals["InternalErrors"] == 1
    # AND nothing changed: still a member, every count as before
    assert wired.store.room_members("desk") == ["a"]
    assert_counters_equal_rows(wired)


def test_a_cancellation_for_another_reason_is_internal_and_counted(wired: Wired) -> None:
    # GIVEN a transaction cancelled for a reason that is neither a condition nor contention
    wired.connect("c1")
    with inject(wired).next(1, lambda _: cancelled("ValidationError", "None")) as faults:
        # WHEN a client subscribes
        reply = wired.send("c1", subscribe("AAPL") | {"request_id": "s"})
    # THEN it gets INTERNAL (not SUBSCRIPTION_LIMIT), once, and the metric counts it
    assert error_code(reply) == "INTERNAL", reply
    assert reply["request_id"] == "s"
    assert faults.injected == 1
    assert wired.metrics.totals["InternalErrors"] == 1
    assert_counters_equal_rows(wired)


@pytest.mark.parametrize("answer", [THROTTLED, THROUGHPUT, INTERNAL], ids=["throttling", "throughput", "internal"])
def test_throttled_plain_calls_are_retried(wired: Wired, answer: tuple[int, dict[str, Any]]) -> None:
    # GIVEN a connection whose next two row updates (every frame's touch) are refused for a passing reason
    wired.connect("c1")
    with inject(wired, "UpdateItem").next(2, lambda _: answer) as faults:
        # WHEN it pings
        reply = wired.send("c1", {"action": "ping"})
    # THEN it gets its pong
    assert reply["message_type"] == "pong", reply
    assert faults.injected == 2


def test_throttling_that_does_not_pass_is_internal_after_bounded_retries(wired: Wired) -> None:
    wired.connect("c1")
    with inject(wired, "UpdateItem").always(lambda _: THROTTLED) as faults:
        reply = wired.send("c1", {"action": "ping", "request_id": "p"})
    assert error_code(reply) == "INTERNAL", reply
    assert faults.injected == wired.store.backoff.attempts


def test_throttling_of_a_whole_transaction_is_retried(wired: Wired) -> None:
    wired.connect("c1")
    with inject(wired).next(2, lambda _: THROUGHPUT) as faults:
        reply = wired.send("c1", {"action": "joinRoom", "room": "desk"})
    assert reply["message_type"] == "join_room", reply
    assert faults.injected == 2
    assert_counters_equal_rows(wired)


def test_backoff_is_jittered_and_bounded(wired: Wired) -> None:
    # GIVEN endless conflicts, and a record of each wait
    waits: list[float] = []
    wired.store.backoff.sleep = waits.append
    wired.connect("c1")
    with inject(wired).always(lambda _: cancelled("None", "TransactionConflict")):
        wired.send("c1", subscribe("AAPL"))
    # THEN one wait between attempts, each within its growing, capped bound, and not all alike
    backoff = wired.store.backoff
    assert len(waits) == backoff.attempts - 1
    for attempt, wait in enumerate(waits):
        assert 0 <= wait <= min(backoff.cap_seconds, backoff.base_seconds * 2**attempt)
    assert len(set(waits)) > 1


def test_mixed_actions_under_random_conflicts_give_no_false_limits_and_no_drift(
    settings: Settings, wired: Wired
) -> None:
    # GIVEN 30% of all transactions cancelled by a conflict or throttling on a random item
    rng = random.Random(7)

    def sometimes(request: dict[str, Any]) -> tuple[int, dict[str, Any]] | None:
        if rng.random() >= 0.3:
            return None
        codes = ["None"] * len(request["TransactItems"])
        codes[rng.randrange(len(codes))] = rng.choice(RETRYABLE_REASONS)
        return cancelled(*codes)

    clients = [f"c{i}" for i in range(6)]
    for cid in clients:
        wired.connect(cid, level="free")
    errors: list[str | None] = []
    with inject(wired).always(sometimes) as faults:
        # WHEN the clients subscribe, unsubscribe, join and leave within their limits, in rounds
        for round_ in range(4):
            wired.clock.advance(1)  # a new rate-budget second per round: actions cost 10, the budget is not tested
            for i, cid in enumerate(clients):
                symbols = [f"S{(i + round_ + k) % 8}" for k in range(3)]
                room = f"room{(i + round_) % 3}"
                frames = [
                    subscribe(*symbols),
                    {"action": "joinRoom", "room": room},
                    {"action": "unsubscribe", "streams": [{"stream_type": "market_data", "symbol": symbols[0]}]},
                    {"action": "leaveRoom", "room": room},
                    {
                        "action": "unsubscribe",
                        "streams": [{"stream_type": "market_data", "symbol": s} for s in symbols],
                    },
                ]
                errors.extend(error_code(wired.send(cid, frame)) for frame in frames)
    # THEN faults were met, no action failed, and every counter equals its rows
    assert faults.injected > 20
    assert set(errors) == {None}
    assert_counters_equal_rows(wired)


@pytest.mark.parametrize(
    "frame",
    [
        subscribe("AAPL") | {"streams": [{"stream_type": "market_data", "interval": 1e-300}]},
        subscribe("AAPL") | {"streams": [{"stream_type": "market_data", "interval": 0.0009}]},
        subscribe("AAPL") | {"streams": [{"stream_type": "market_data", "interval": 1e300}]},
        {"action": "resume", "session_token": "x", "last_seq": {"market_data:AAPL": 10**40}},
    ],
    ids=["tiny-interval", "below-minimum", "huge-interval", "huge-seq"],
)
def test_numbers_dynamodb_cannot_store_are_invalid_message(wired: Wired, frame: dict[str, Any]) -> None:
    wired.connect("c1")
    reply = wired.send("c1", frame)
    assert error_code(reply) == "INVALID_MESSAGE", reply
    assert_counters_equal_rows(wired)


def test_the_minimum_interval_is_accepted_and_stored(wired: Wired) -> None:
    wired.connect("c1")
    reply = wired.send("c1", {"action": "subscribe", "streams": [{"stream_type": "alerts", "interval": 0.001}]})
    assert reply["message_type"] == "subscribe", reply
    assert [s.interval for s in wired.store.subscriptions_of("c1")] == [0.001]


# ---------------------------------------------------------------- seats: one transaction shape per seat state


def test_a_seat_condition_failing_under_a_join_moves_it_to_the_next_shape_not_to_a_limit(wired: Wired) -> None:
    # GIVEN a client, and DynamoDB answering its first join that the seat's condition failed (index 1 of the
    # new-seat shape, as when another connection of the user took the seat a moment before)
    wired.connect("a")
    with inject(wired).next(1, lambda _: cancelled("None", CONDITION_FAILED, "None", "None")) as faults:
        # WHEN it joins
        reply = wired.send("a", {"action": "joinRoom", "room": "desk"})
    # THEN it tried the shared-seat shape (refused for real: there is no seat), then a new seat again, and is in
    assert reply["message_type"] == "join_room", reply
    assert (faults.injected, faults.passed) == (1, 2)
    assert wired.store.room_members("desk") == ["a"]
    assert wired.store.room_size("desk") == 1
    assert_counters_equal_rows(wired)


def test_a_conflict_while_joining_a_users_seat_is_retried_and_the_seat_shared(wired: Wired) -> None:
    # GIVEN a user in a room through one connection, and a second connection of theirs
    wired.connect("a1")
    wired.connect("a2")
    assert wired.store.join_room("desk", "a1", "user-1", JoinLimits(capacity=10, room_limit=10)) is Outcome.DONE
    # WHEN the second joins, and its shared-seat transaction (after the new-seat one failed for real) conflicts
    with inject(wired).next(1, lambda _: None).next(1, lambda _: cancelled("None", "TransactionConflict", "None")):
        outcome = wired.store.join_room("desk", "a2", "user-1", JoinLimits(capacity=10, room_limit=10))
    # THEN it shares the seat: two members, one place taken
    assert outcome is Outcome.SHARED
    assert sorted(wired.store.room_members("desk")) == ["a1", "a2"]
    assert wired.store.room_size("desk") == 1
    assert_counters_equal_rows(wired)


def test_a_conflict_while_leaving_a_shared_seat_is_retried_and_the_seat_kept(wired: Wired) -> None:
    # GIVEN a user in a room through two connections
    for cid in ("a1", "a2"):
        wired.connect(cid)
        wired.store.join_room("desk", cid, "user-1", JoinLimits(capacity=10, room_limit=10))
    # WHEN one leaves: the last-connection shape fails on the seat for real, the shared one conflicts once
    with inject(wired).next(1, lambda _: None).next(1, lambda _: cancelled("None", "TransactionConflict", "None")):
        outcome = wired.store.leave_room("desk", "a1")
    # THEN the other connection keeps the seat, and every count equals its rows
    assert outcome is Outcome.SHARED
    assert wired.store.room_members("desk") == ["a2"]
    assert wired.store.room_size("desk") == 1
    assert_counters_equal_rows(wired)


def test_leaving_once_the_connection_row_is_gone_still_frees_the_seat(wired: Wired) -> None:
    # GIVEN two users in a data room, and the row of one's connection gone (its counters with it)
    wired.connect("a")
    wired.connect("b", user_id="user-2")
    for cid in ("a", "b"):
        assert wired.send(cid, {"action": "joinRoom", "room": "alerts"})["message_type"] == "join_room"
    wired.store._raw.delete_item(TableName=wired.settings.connections_table, Key={"pk": {"S": "a"}})
    # WHEN that connection leaves
    outcome = wired.store.leave_room("alerts", "a", subscription=True)
    # THEN the membership and the seat go without the counters, and the room has one place more
    assert outcome is Outcome.DONE
    assert wired.store.room_members("alerts") == ["b"]
    assert wired.store.room_size("alerts") == 1
    assert_counters_equal_rows(wired)


# ---------------------------------------------------------------- batch reads of stream heads

BATCH_GET = "BatchGetItem"


def unprocessed(request: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """DynamoDB's answer when it read none of the keys asked (throttled): all of them back as unprocessed."""
    return 200, {"Responses": {}, "UnprocessedKeys": request["RequestItems"]}


def first_key_only(stream_head: dict[str, Any]) -> Callable[[dict[str, Any]], tuple[int, dict[str, Any]]]:
    """An answer that reads the first key (as `stream_head`, given) and leaves the others unprocessed."""

    def answer(request: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        [(table, asked)] = request["RequestItems"].items()
        rest = {table: {**asked, "Keys": asked["Keys"][1:]}}
        return 200, {"Responses": {table: [stream_head]}, "UnprocessedKeys": rest}

    return answer


def sequence(wired: Wired, stream: str, events: int) -> None:
    for index in range(events):
        wired.store.sequence_event(stream, f"{stream}#{index}", lambda seq: f"message {seq}")


def test_unprocessed_stream_heads_are_asked_again(wired: Wired) -> None:
    # GIVEN three streams with history, and DynamoDB reading only the first key, then none, then all
    for stream, events in (("market_data:A", 1), ("market_data:B", 2), ("market_data:C", 3)):
        sequence(wired, stream, events)
    streams = ["market_data:A", "market_data:B", "market_data:C"]
    expected = {stream: wired.store.stream_head(stream) for stream in streams}
    head_a = {
        "stream": {"S": "market_data:A"},
        "seq": {"N": "0"},
        "last_seq": {"N": "1"},
        "last_message": {"S": "message 1"},
    }
    waits: list[float] = []
    wired.store.backoff.sleep = waits.append
    with inject(wired, BATCH_GET).next(1, first_key_only(head_a)).next(1, unprocessed) as faults:
        # WHEN their heads are read together
        heads = wired.store.stream_heads(streams)
    # THEN the keys left over were asked again after a backoff, until DynamoDB read them, and every head is right
    assert (faults.injected, faults.passed) == (2, 1)
    assert len(waits) == 2
    assert heads == expected
    assert expected["market_data:C"].last_seq == 3


def test_stream_heads_still_unprocessed_after_the_retries_are_read_one_by_one(wired: Wired) -> None:
    # GIVEN two streams with history, and DynamoDB never processing a batch read
    sequence(wired, "market_data:A", 2)
    sequence(wired, "alerts:B", 1)
    streams = ["market_data:A", "alerts:B", "market_data:NONE"]
    expected = {stream: wired.store.stream_head(stream) for stream in streams}
    read_one_by_one: list[tuple[str, bool]] = []

    def count_get(params: dict[str, Any], **_: Any) -> None:
        read_one_by_one.append((params["Key"]["stream"]["S"], params.get("ConsistentRead", False)))

    wired.store._raw.meta.events.register("provide-client-params.dynamodb.GetItem", count_get)
    with inject(wired, BATCH_GET).always(unprocessed) as faults:
        # WHEN their heads are read together
        heads = wired.store.stream_heads(streams)
    # THEN the batch read was tried a bounded number of times, then each stream was read on its own
    assert faults.injected == wired.store.backoff.attempts
    assert read_one_by_one == [(stream, True) for stream in streams]
    assert heads == expected
    assert heads["market_data:A"].last_seq == 2


def test_batch_reads_of_stream_heads_are_consistent(wired: Wired) -> None:
    # GIVEN a record of each BatchGetItem request, every one let through to moto
    asked: list[dict[str, Any]] = []

    def record(request: dict[str, Any]) -> None:
        asked.append(request)

    with inject(wired, BATCH_GET).always(record):
        # WHEN two heads are read
        wired.store.stream_heads(["market_data:A", "market_data:B"])
    # THEN one request, reading consistently (a head written a moment ago must be seen)
    [request] = asked
    assert request["RequestItems"][wired.settings.streams_table]["ConsistentRead"] is True


# ---------------------------------------------------------------- batch deletes of a closing connection's rows

BATCH_WRITE = "BatchWriteItem"


def first_write_only(wired: Wired) -> Callable[[dict[str, Any]], tuple[int, dict[str, Any]]]:
    """An answer that deletes the first row asked (in moto, as DynamoDB would) and leaves the others unprocessed."""

    def answer(request: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        [(table, writes)] = request["RequestItems"].items()
        wired.store._raw.delete_item(TableName=table, Key=writes[0]["DeleteRequest"]["Key"])
        return 200, {"UnprocessedItems": {table: writes[1:]} if writes[1:] else {}}

    return answer


def nothing_written(request: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """DynamoDB's answer when it wrote none of a batch (throttled): all of it back as unprocessed."""
    return 200, {"UnprocessedItems": request["RequestItems"]}


def subscribed_to_many(wired: Wired, connection_id: str, count: int) -> list[str]:
    wired.connect(connection_id)
    symbols = [f"S{index:02d}" for index in range(count)]
    for start in range(0, count, 10):
        assert wired.send(connection_id, subscribe(*symbols[start : start + 10]))["message_type"] == "subscribe"
    keys = [f"market_data:{symbol}" for symbol in symbols]
    assert [s.stream_key for s in wired.store.subscriptions_of(connection_id)] == keys
    return keys


def test_a_disconnect_deletes_its_subscription_rows_25_a_call_and_sends_unprocessed_ones_again(wired: Wired) -> None:
    # GIVEN a connection subscribed to 30 streams, and DynamoDB deleting only the first row of the first batch,
    # then none of the next
    subscribed_to_many(wired, "many", 30)
    waits: list[float] = []
    wired.store.backoff.sleep = waits.append
    with inject(wired, BATCH_WRITE).next(1, first_write_only(wired)).next(1, nothing_written) as faults:
        # WHEN it disconnects
        wired.service.disconnect("many")
    # THEN two batches (25 rows, then 5) went, the first one's leftovers again after a backoff each, and every
    # row is gone
    assert (faults.injected, faults.passed) == (2, 2)
    assert len(waits) == 2
    assert wired.store.subscriptions_of("many") == []
    assert items(wired, wired.settings.subscriptions_table) == []


def test_subscription_rows_still_unprocessed_after_the_retries_are_deleted_one_by_one(wired: Wired) -> None:
    # GIVEN a connection on three streams, and DynamoDB never processing a batch write
    keys = subscribed_to_many(wired, "stuck", 3)
    deleted_one_by_one: list[str] = []

    def count_delete(params: dict[str, Any], **_: Any) -> None:
        if params["TableName"] == wired.settings.subscriptions_table:
            deleted_one_by_one.append(params["Key"]["stream_key"]["S"])

    wired.store._raw.meta.events.register("provide-client-params.dynamodb.DeleteItem", count_delete)
    with inject(wired, BATCH_WRITE).always(nothing_written) as faults:
        # WHEN it disconnects
        wired.service.disconnect("stuck")
    # THEN the batch was tried a bounded number of times, then each row was deleted on its own
    assert faults.injected == wired.store.backoff.attempts
    assert deleted_one_by_one == keys
    assert items(wired, wired.settings.subscriptions_table) == []
