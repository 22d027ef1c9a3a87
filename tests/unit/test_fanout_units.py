"""EventFanOut's parts with in-memory fakes: the audience cache, audiences, intervals, FIFO group
blocking, poison events, framing and retries. No DynamoDB here: the fake store counts calls."""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from local.fakes import CountingMetrics, InMemoryGateway, InMemorySender
from quanttrade_protocol.data import DATA_PAYLOADS, MarketDataPayload, data_payload
from quanttrade_protocol.enums import MessageType
from quanttrade_ws.config import Limits, Settings
from quanttrade_ws.fanout import DEADLINE_RESERVE_SECONDS, EventFanOut
from quanttrade_ws.models import Subscription
from quanttrade_ws.ttl_cache import TtlCache
from quanttrade_ws.upstream import parse_upstream_event
from tests.integration import events_builder as eb


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeStore:
    """The slice of DynamoStore the fan-out uses, in memory, counting look-ups."""

    def __init__(self) -> None:
        self.subscriptions: dict[str, list[Subscription]] = defaultdict(list)
        self.rooms: dict[str, list[str]] = defaultdict(list)
        self.lookups: Counter[str] = Counter()
        self.heads: Counter[str] = Counter()
        self.sequenced: dict[str, tuple[int, str]] = {}
        self.broken_events: set[str] = set()

    def subscribe(self, key: str, connection_id: str, interval: float | None = None, **filters: str) -> None:
        self.subscriptions[key].append(Subscription(key, connection_id, "u", interval, filters))

    page_size = 1_000_000  # subscriptions a Query page holds (DynamoDB's page is up to 1 MB)

    def subscribers(self, key: str) -> list[Subscription]:
        return [subscription for page in self.subscriber_pages(key) for subscription in page]

    def subscriber_pages(self, key: str) -> Iterator[list[Subscription]]:
        self.lookups[key] += 1
        rows = list(self.subscriptions[key])
        yield from (rows[start : start + self.page_size] for start in range(0, len(rows), self.page_size))

    def room_audience(self, room: str) -> list[Subscription]:
        self.lookups[f"room:{room}"] += 1
        return [Subscription(f"room:{room}", connection_id) for connection_id in self.rooms[room]]

    def sequence_new_events(self, events: Any) -> None:
        return None  # "does not apply": the fan-out sequences each event with sequence_event

    def sequence_event(self, stream: str, event_id: str, render: Callable[[int], str]) -> tuple[int, str, bool]:
        if event_id in self.broken_events:
            raise RuntimeError("DynamoDB is having a bad day")
        if event_id in self.sequenced:
            return (*self.sequenced[event_id], False)
        self.heads[stream] += 1
        seq = self.heads[stream]
        self.sequenced[event_id] = (seq, render(seq))
        return seq, self.sequenced[event_id][1], True


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store() -> FakeStore:
    return FakeStore()


@pytest.fixture
def removed() -> list[str]:
    return []


def make_fanout(store: FakeStore, clock: Clock, removed: list[str], **overrides: Any) -> EventFanOut:
    settings = Settings(
        jwt_secret="s",
        session_secret="ss",
        delivery_queue_url="delivery.fifo",
        events_dlq_url="events-dlq.fifo",
        **overrides,
    )
    gateway = InMemoryGateway()
    return EventFanOut(
        settings,
        store,  # type: ignore[arg-type]
        gateway,
        InMemorySender(),
        removed.append,
        CountingMetrics(),
        clock=clock,
        monotonic=clock,
    )


@pytest.fixture
def fanout(store: FakeStore, clock: Clock, removed: list[str]) -> EventFanOut:
    return make_fanout(store, clock, removed)


def gateway(fanout: EventFanOut) -> InMemoryGateway:
    assert isinstance(fanout.gateway, InMemoryGateway)
    return fanout.gateway


def sender(fanout: EventFanOut) -> InMemorySender:
    assert isinstance(fanout.sender, InMemorySender)
    return fanout.sender


def event(raw: dict[str, Any]):
    return parse_upstream_event(raw)


# ---------------------------------------------------------------- TtlCache


def test_ttl_cache_loads_once_within_its_time_and_again_after(clock: Clock):
    # GIVEN a 0.5 s cache and a loader that counts its calls
    cache = TtlCache(0.5, clock)
    loads: list[int] = []

    def load() -> list[str]:
        loads.append(1)
        return ["a"]

    # WHEN the key is read at 0, 0.49 s, then at 0.5 s and 0.6 s
    cache.get("k", load)
    clock.now += 0.49
    cache.get("k", load)
    calls_within = len(loads)
    clock.now += 0.01
    cache.get("k", load)
    clock.now += 0.1
    cache.get("k", load)

    # THEN it loaded once within the time, again the moment the time was up, and then served the cache
    assert calls_within == 1
    assert len(loads) == 2


def test_ttl_cache_of_zero_seconds_always_loads(clock: Clock):
    # GIVEN caching switched off  WHEN the same key is read three times  THEN it loads three times
    cache = TtlCache(0, clock)
    loads = Counter[str]()
    for _ in range(3):
        cache.get("k", lambda: loads.update(["k"]))
    assert loads["k"] == 3


def test_ttl_cache_keeps_keys_apart(clock: Clock):
    # GIVEN two keys  WHEN both are read  THEN each holds its own value
    cache = TtlCache(1, clock)
    assert cache.get("a", lambda: [1]) == [1]
    assert cache.get("b", lambda: [2]) == [2]
    assert cache.get("a", lambda: [3]) == [1]


def test_forget_connection_drops_it_from_every_cached_audience(clock: Clock):
    # GIVEN cached subscriber lists and room member lists that include connection x
    cache = TtlCache(10, clock)
    cache.get(
        "market_data:AAPL", lambda: [Subscription("market_data:AAPL", "x"), Subscription("market_data:AAPL", "y")]
    )
    cache.get("room:alerts", lambda: ["x", "z"])
    cache.get("alerts:*", lambda: [Subscription("alerts:*", "y")])

    # WHEN x is forgotten
    cache.forget_connection("x")

    # THEN x is gone from both kinds of list, and nothing else changed or reloaded
    def fail() -> list[Any]:
        raise AssertionError("should be cached")

    assert [s.connection_id for s in cache.get("market_data:AAPL", fail)] == ["y"]
    assert cache.get("room:alerts", fail) == ["z"]
    assert [s.connection_id for s in cache.get("alerts:*", fail)] == ["y"]


# ---------------------------------------------------------------- CountingMetrics


def test_counting_metrics_totals_and_millisecond_samples():
    # GIVEN metrics  WHEN counts and latencies are added
    metrics = CountingMetrics()
    metrics.add_metric("Delivered", "Count", 2)
    metrics.add_metric("Delivered", "Count", 3)
    metrics.add_metric("DeliveryLag", "Milliseconds", 12.5)
    metrics.add_metric("DeliveryLag", "Milliseconds", 7.5)
    # THEN counts add up and latencies keep their samples
    assert metrics.totals["Delivered"] == 5
    assert metrics.samples["DeliveryLag"] == [12.5, 7.5]
    assert "Delivered" not in metrics.samples


# ---------------------------------------------------------------- audience


def test_audience_is_symbol_then_type_then_room_each_connection_once(fanout: EventFanOut, store: FakeStore):
    # GIVEN overlapping audiences
    store.subscribe("market_data:AAPL", "a")
    store.subscribe("market_data:AAPL", "b")
    store.subscribe("market_data:*", "b")
    store.subscribe("market_data:*", "c")
    store.rooms["market_data_AAPL"] = ["c", "d", "a"]
    # WHEN the audience of an AAPL tick is built
    audience = fanout.audience(event(eb.market_data()))
    # THEN each connection is listed once, in a stable order
    assert audience == ["a", "b", "c", "d"]


def test_audience_of_a_symbol_less_event_reads_only_the_type_key(fanout: EventFanOut, store: FakeStore):
    # GIVEN an alert with no symbol  WHEN its audience is built
    store.subscribe("alerts:*", "a")
    store.subscribe("alerts:AAPL", "b")
    audience = fanout.audience(event(eb.alert()))
    # THEN the type subscribers and the alerts room are read, no symbol key
    assert audience == ["a"]
    assert set(store.lookups) == {"alerts:*", "room:alerts"}


def test_audience_of_an_event_without_a_data_room_reads_no_room(fanout: EventFanOut, store: FakeStore):
    # GIVEN a system status event  WHEN its audience is built  THEN no room is Queried
    store.subscribe("system_status:*", "ops")
    assert fanout.audience(event(eb.system_status())) == ["ops"]
    assert set(store.lookups) == {"system_status:*"}


def test_filters_are_per_subscription(fanout: EventFanOut, store: FakeStore):
    # GIVEN a picky subscriber and a relaxed one
    store.subscribe("market_data:AAPL", "picky", min_volume="5000")
    store.subscribe("market_data:AAPL", "relaxed")
    # WHEN a small tick's audience is built  THEN only the relaxed one is in it
    assert fanout.audience(event(eb.market_data(volume=10))) == ["relaxed"]


def test_interval_is_kept_per_connection_and_subscription(fanout: EventFanOut, store: FakeStore, clock: Clock):
    # GIVEN two connections with a 2 s interval on AAPL
    store.subscribe("market_data:AAPL", "a", interval=2)
    store.subscribe("market_data:AAPL", "b", interval=2)
    # WHEN ticks come at 0, 1, 2, 3 s
    got = []
    for _ in range(4):
        got.append(fanout.audience(event(eb.market_data())))
        clock.now += 1
    # THEN both get the ticks of 0 s and 2 s
    assert got == [["a", "b"], [], ["a", "b"], []]


def test_a_filtered_out_event_does_not_use_up_the_interval(fanout: EventFanOut, store: FakeStore, clock: Clock):
    # GIVEN a subscriber wanting big ticks at most every 5 s
    store.subscribe("market_data:AAPL", "a", interval=5, min_volume="1000")
    # WHEN a small tick comes, then a big one a second later
    small = fanout.audience(event(eb.market_data(volume=1)))
    clock.now += 1
    big = fanout.audience(event(eb.market_data(volume=2000)))
    # THEN the big one is delivered
    assert (small, big) == ([], ["a"])


# ---------------------------------------------------------------- batches and FIFO groups


def test_a_failed_record_blocks_only_later_records_of_its_group(fanout: EventFanOut, store: FakeStore):
    # GIVEN subscribers of everything and a batch of two groups, the second market-data event unsequenceable
    store.subscribe("market_data:*", "md")
    store.subscribe("predictions:*", "pr")
    events = [eb.market_data(), eb.market_data(), eb.prediction(), eb.market_data(), eb.prediction()]
    store.broken_events.add(events[1]["id"])
    records = eb.records(*events)
    gateway(fanout).connect("md", "pr")

    # WHEN it is processed
    response = fanout.process_events(records)

    # THEN records 1 and 3 (market-data, at and after the failure) fail; the rest is delivered
    assert eb.failures(response) == [records[1]["messageId"], records[3]["messageId"]]
    assert [m["seq"] for m in gateway(fanout).messages("md")] == [1]
    assert [m["seq"] for m in gateway(fanout).messages("pr")] == [1, 2]
    # AND the later record was not sequenced, so its retry takes the next seq in order
    assert store.heads["market_data:AAPL"] == 1


def test_an_invalid_record_after_a_failure_in_its_group_is_retried_not_dead_lettered(
    fanout: EventFanOut, store: FakeStore
):
    # GIVEN a failing market-data event followed by an invalid one in the same group
    broken = eb.market_data()
    store.broken_events.add(broken["id"])
    records = [eb.sqs_record(broken), eb.sqs_record("{}", group="market-data")]
    # WHEN processed  THEN both are reported (order within the group is kept) and the DLQ is untouched
    assert eb.failures(fanout.process_events(records)) == [r["messageId"] for r in records]
    assert sender(fanout).sent == {}


def test_a_deeply_nested_body_goes_to_the_dlq_and_does_not_crash_the_batch(fanout: EventFanOut, store: FakeStore):
    # GIVEN a poison body nested deeper than the JSON parser recurses, beside a valid tick
    store.subscribe("market_data:AAPL", "a")
    gateway(fanout).connect("a")
    poison = eb.sqs_record("[" * 100_000 + "]" * 100_000, group="market-data")
    records = [poison, eb.sqs_record(eb.market_data())]
    # WHEN the batch is processed
    response = fanout.process_events(records)
    # THEN the tick is delivered, the poison body is dead-lettered, nothing is reported
    assert eb.failures(response) == []
    assert [m["seq"] for m in gateway(fanout).messages("a")] == [1]
    assert len(sender(fanout).sent["events-dlq.fifo"]) == 1


def test_an_event_that_cannot_be_rendered_goes_to_the_dlq_not_round_the_queue(fanout: EventFanOut, store: FakeStore):
    # GIVEN a market data event whose extra detail nests too deep to serialise, beside a valid tick
    store.subscribe("market_data:AAPL", "a")
    gateway(fanout).connect("a")
    deep: dict[str, Any] = {}
    cursor = deep
    for _ in range(900):
        cursor["a"] = {}
        cursor = cursor["a"]
    poison = eb.market_data()
    poison["detail"]["book"] = deep
    records = eb.records(poison, eb.market_data())
    # WHEN the batch is processed
    response = fanout.process_events(records)
    # THEN the poison event is dead-lettered at once instead of failing (and blocking its group) five times
    assert eb.failures(response) == []
    assert [m["seq"] for m in gateway(fanout).messages("a")] == [1]
    assert len(sender(fanout).sent["events-dlq.fifo"]) == 1


# ---------------------------------------------------------------- framing and retries


def test_many_messages_for_one_connection_are_split_into_frames_under_the_limit(
    store: FakeStore, clock: Clock, removed: list[str]
):
    # GIVEN a 4 KB message limit and a subscriber of everything
    small = make_fanout(store, clock, removed, limits=Limits(max_message_bytes=4096))
    store.subscribe("market_data:*", "a")
    gateway(small).connect("a")
    # WHEN ten 1 KB-ish ticks arrive in one batch
    ticks = []
    for i in range(10):
        tick = eb.market_data(price=100 + i)
        tick["detail"]["note"] = "n" * 700
        ticks.append(tick)
    small.process_events(eb.records(*ticks))
    # THEN several frames went out, each under 4 KB, together holding all ten in order
    frames = gateway(small).sent["a"]
    assert len(frames) > 1
    assert all(len(frame) <= 4096 for frame in frames)
    assert [m["seq"] for m in gateway(small).messages("a")] == list(range(1, 11))


def test_a_failed_post_fails_its_record_and_the_later_records_of_its_group(fanout: EventFanOut, store: FakeStore):
    # GIVEN a failing subscriber of AAPL and a healthy subscriber of every symbol
    store.subscribe("market_data:AAPL", "x")
    store.subscribe("market_data:*", "ok")
    gateway(fanout).connect("x", "ok")
    gateway(fanout).failing.add("x")
    # WHEN a batch with an AAPL tick, then an MSFT tick of the same group, and an alert is processed
    batch = eb.records(eb.market_data("AAPL"), eb.market_data("MSFT"), eb.alert())
    response = fanout.process_events(batch)
    # THEN the AAPL record and the later record of its group fail, so SQS redelivers them in order;
    # the other group's record is acknowledged, and nothing went to the delivery queue
    assert eb.failures(response) == [batch[0]["messageId"], batch[1]["messageId"]]
    assert sender(fanout).sent == {}
    assert [m["seq"] for m in gateway(fanout).messages("ok")] == [1, 1]


def test_on_the_last_receive_an_unreachable_connection_is_closed_instead(fanout: EventFanOut, store: FakeStore):
    # GIVEN a failing subscriber, and a record on its fifth receive (the next failure would dead-letter it)
    store.subscribe("market_data:AAPL", "x")
    gateway(fanout).connect("x")
    gateway(fanout).failing.add("x")
    record = eb.sqs_record(eb.market_data("AAPL"), receive_count=5)
    # WHEN it is processed
    response = fanout.process_events([record])
    # THEN the record is acknowledged and the connection closed: its client resumes and replays
    assert eb.failures(response) == []
    assert gateway(fanout).closed == ["x"]
    assert fanout.metrics.totals["UndeliverableClosed"] == 1  # type: ignore[attr-defined]


# ---------------------------------------------------------------- large audiences, a page at a time


def journal(fanout: EventFanOut, store: FakeStore) -> list[str]:
    """What the fan-out does from now on, in order: Query pages read, chunks sent (their seqs), posts made."""
    log: list[str] = []
    read_pages, send, post_many = store.subscriber_pages, sender(fanout).send, gateway(fanout).post_many

    def pages(key: str) -> Iterator[list[Subscription]]:
        for number, page in enumerate(read_pages(key)):
            log.append(f"page {number}")
            yield page

    def sent(queue_url: str, messages: list[Any]) -> list[Any]:
        log.append(f"chunks of seq {sorted({json.loads(m.body)['seq'] for m in messages})}")
        return send(queue_url, messages)

    def posted(posts: Any, deadline: float | None = None) -> Any:
        log.append(f"{len(posts)} posts")
        return post_many(posts, deadline)

    store.subscriber_pages = pages  # type: ignore[method-assign]
    sender(fanout).send = sent  # type: ignore[method-assign]
    gateway(fanout).post_many = posted  # type: ignore[method-assign]
    return log


@pytest.fixture
def paged(store: FakeStore, clock: Clock, removed: list[str]) -> EventFanOut:
    """Chunks of 3 connections, Query pages of 4 subscriptions; AAPL has 8 picky subscribers and 2 relaxed."""
    store.page_size = 4
    for index in range(8):
        store.subscribe("market_data:AAPL", f"picky{index}", min_volume="5000")
    store.subscribe("market_data:AAPL", "relaxed0")
    store.subscribe("market_data:AAPL", "relaxed1")
    fanout = make_fanout(store, clock, removed, chunk_size=3)
    gateway(fanout).connect(*(s.connection_id for s in store.subscriptions["market_data:AAPL"]))
    return fanout


def posted(fanout: EventFanOut) -> list[str]:
    """The connections that were posted something directly."""
    return [connection_id for connection_id, frames in gateway(fanout).sent.items() if frames]


def chunked_connections(fanout: EventFanOut) -> list[str]:
    return sorted(c for m in sender(fanout).sent.get("delivery.fifo", []) for c in json.loads(m.body)["connections"])


def test_a_large_audience_goes_out_in_chunks_as_its_pages_are_read(paged: EventFanOut, store: FakeStore):
    # GIVEN an audience of 10 (over the chunk size of 3) that DynamoDB answers in pages of 4
    log = journal(paged, store)

    # WHEN a big tick (every subscriber's filter passes) is fanned out
    response = paged.process_events(eb.records(eb.market_data(volume=10_000)))

    # THEN from the second page on, the chunks of what was read went to the delivery queue before the next
    # page was read, so delivery functions start on the first subscribers while the fan-out reads the rest
    # (the first page waited for the second: an audience of two pages goes out in one round)
    assert log == ["page 0", "page 1", "chunks of seq [1]", "page 2", "chunks of seq [1]"]
    # AND every subscriber is in exactly one chunk, and nobody was posted to directly
    assert chunked_connections(paged) == sorted(s.connection_id for s in store.subscriptions["market_data:AAPL"])
    assert eb.failures(response) == [] and not posted(paged)


def test_chunks_of_an_event_wait_for_the_direct_posts_to_its_stream_earlier_in_the_batch(
    paged: EventFanOut, store: FakeStore
):
    # GIVEN a batch of a small tick (only the 2 relaxed subscribers: posted directly) then a big one (all 10)
    log = journal(paged, store)

    # WHEN it is fanned out
    paged.process_events(eb.records(eb.market_data(volume=10), eb.market_data(volume=10_000)))

    # THEN the big tick's chunks (its audience from the cache the first one filled) went out only after
    # the small tick's posts, so it cannot overtake it
    assert log == ["page 0", "page 1", "page 2", "2 posts", "chunks of seq [2]"]
    assert chunked_connections(paged) == sorted(s.connection_id for s in store.subscriptions["market_data:AAPL"])


def test_after_an_event_of_a_stream_went_by_chunks_the_later_ones_of_the_batch_follow_it(
    paged: EventFanOut, store: FakeStore
):
    # GIVEN a batch of a big tick (10 subscribers: chunks) then a small one (2 subscribers)
    log = journal(paged, store)

    # WHEN it is fanned out
    paged.process_events(eb.records(eb.market_data(volume=10_000), eb.market_data(volume=10)))

    # THEN the small tick went by chunks too, behind the big one in the same delivery groups, not by a
    # direct post that would reach its subscribers first
    assert [line for line in log if not line.startswith("page")] == ["chunks of seq [1]"] * 2 + ["chunks of seq [2]"]
    assert not posted(paged)
    second = [m for m in sender(paged).sent["delivery.fifo"] if json.loads(m.body)["seq"] == 2]
    assert sorted(c for m in second for c in json.loads(m.body)["connections"]) == ["relaxed0", "relaxed1"]


def test_a_chunk_that_cannot_be_queued_fails_its_record_and_the_later_ones_of_its_group(
    paged: EventFanOut, store: FakeStore
):
    # GIVEN a delivery queue that refuses every message
    sender(paged).failing = True
    records = eb.records(eb.market_data(volume=10_000), eb.market_data(volume=10))

    # WHEN a big tick and a small one of the same message group are fanned out
    response = paged.process_events(records)

    # THEN both come back for redelivery, in order, and the small one was not posted past the failed one
    assert eb.failures(response) == [record["messageId"] for record in records]
    assert not posted(paged)


def test_a_batch_whose_every_chunk_failed_answers_with_all_of_them(fanout: EventFanOut):
    # GIVEN two chunks of different groups, both for a failing connection
    gateway(fanout).connect("x")
    gateway(fanout).failing.add("x")
    records = [
        eb.sqs_record(json.dumps({"data": '{"n":1}', "connections": ["x"]}), group="market_data:AAPL#1"),
        eb.sqs_record(json.dumps({"data": '{"n":2}', "connections": ["x"]}), group="alerts#1"),
    ]
    # WHEN processed
    response = fanout.process_chunks(records)
    # THEN the invocation does not fail: both are reported for redelivery
    assert eb.failures(response) == [records[0]["messageId"], records[1]["messageId"]]


def test_a_failed_chunk_blocks_later_chunks_of_its_group(fanout: EventFanOut):
    # GIVEN two retry chunks for one connection that is failing, and one for a healthy connection
    gateway(fanout).connect("x", "ok")
    gateway(fanout).failing.add("x")
    records = [
        eb.sqs_record(json.dumps({"data": '{"n":1}', "connections": ["x"]}), group="retry#x"),
        eb.sqs_record(json.dumps({"data": '{"n":2}', "connections": ["x"]}), group="retry#x"),
        eb.sqs_record(json.dumps({"data": '{"n":3}', "connections": ["ok"]}), group="retry#ok"),
    ]
    # WHEN processed
    response = fanout.process_chunks(records)
    # THEN both x chunks are reported (they went to x in one post), the other delivered
    assert eb.failures(response) == [records[0]["messageId"], records[1]["messageId"]]
    assert gateway(fanout).messages("ok") == [{"n": 3}]
    assert fanout.metrics.totals["DeliveryFailed"] == 1  # type: ignore[attr-defined]


def test_chunks_of_every_group_go_out_in_one_call_each_connection_in_order(fanout: EventFanOut):
    # GIVEN a batch with chunks of three groups, the third group holding two chunks
    gateway(fanout).connect("a", "b", "c")
    calls: list[list[str]] = []
    post_many = gateway(fanout).post_many

    def counting(posts, deadline=None):  # type: ignore[no-untyped-def]
        calls.append([post.connection_id for post in posts])
        return post_many(posts, deadline)

    gateway(fanout).post_many = counting  # type: ignore[method-assign]
    records = [
        eb.sqs_record(json.dumps({"data": '{"n":1}', "connections": ["a"]}), group="s#1"),
        eb.sqs_record(json.dumps({"data": '{"n":2}', "connections": ["b"]}), group="s#2"),
        eb.sqs_record(json.dumps({"data": '{"n":3}', "connections": ["c"]}), group="s#3"),
        eb.sqs_record(json.dumps({"data": '{"n":4}', "connections": ["c"]}), group="s#3"),
    ]
    # WHEN processed
    response = fanout.process_chunks(records)
    # THEN every chunk shared one call, the group's two chunks as one post to c, in their order
    assert eb.failures(response) == []
    assert calls == [["a", "b", "c"]]
    assert gateway(fanout).messages("c") == [{"n": 3}, {"n": 4}]


def test_a_failed_post_fails_every_chunk_that_carried_it(fanout: EventFanOut):
    # GIVEN the same message to the same failing connection in chunks of two groups, and a healthy chunk
    gateway(fanout).connect("x", "ok")
    gateway(fanout).failing.add("x")
    records = [
        eb.sqs_record(json.dumps({"data": '{"n":1}', "connections": ["x"]}), group="s#1"),
        eb.sqs_record(json.dumps({"data": '{"n":1}', "connections": ["x"]}), group="t#1"),
        eb.sqs_record(json.dumps({"data": '{"n":2}', "connections": ["ok"]}), group="s#2"),
    ]
    # WHEN processed
    response = fanout.process_chunks(records)
    # THEN both chunks that carried the failed post are redelivered, the healthy one is not
    assert eb.failures(response) == [records[0]["messageId"], records[1]["messageId"]]
    assert gateway(fanout).messages("ok") == [{"n": 2}]


def test_posts_are_given_the_invocations_deadline_less_the_reserve(fanout: EventFanOut, store: FakeStore, clock: Clock):
    # GIVEN a subscriber, and an invocation with 12.5 s left when its batch arrives
    store.subscribe("market_data:AAPL", "a")
    gateway(fanout).connect("a")
    # WHEN an event batch and then a chunk batch are processed, with and without the remaining time
    fanout.process_events(eb.records(eb.market_data("AAPL")), time_left_ms=12_500)
    chunk = eb.sqs_record(json.dumps({"data": '{"n":1}', "connections": ["a"]}), group="s#1")
    fanout.process_chunks([chunk], time_left_ms=12_500)
    fanout.process_events(eb.records(eb.market_data("AAPL")))
    # THEN the gateway was told to be done by then, less what the invocation keeps for itself (on the
    # monotonic clock, which stood still here); without the remaining time there is no deadline
    expected = clock.now + 12.5 - DEADLINE_RESERVE_SECONDS
    assert gateway(fanout).deadlines == [expected, expected, None]


def test_a_data_message_carries_the_protocol_payload_with_extra_fields_then_the_event_id(
    fanout: EventFanOut, store: FakeStore
):
    # GIVEN a subscriber, and a tick whose upstream service sent a field the protocol does not name
    store.subscribe("market_data:AAPL", "c")
    gateway(fanout).connect("c")
    raw = eb.market_data("AAPL", event_id="evt-typed")
    raw["detail"] = {**raw["detail"], "exchange": "XNAS", "ask": None}
    # WHEN it is fanned out
    fanout.process_events(eb.records(raw))
    # THEN the payload is the protocol's MarketDataPayload (it validates as one) and reads, in order: the
    # event's fields, the extra one as sent, then the event id; fields without a value are left out
    [message] = gateway(fanout).messages("c")
    payload = message["payload"]
    assert isinstance(payload, dict)
    assert list(payload) == ["symbol", "price", "volume", "timestamp", "bid", "exchange", "event_id"]
    typed = DATA_PAYLOADS[MessageType.MARKET_DATA].model_validate(payload)
    assert isinstance(typed, MarketDataPayload)
    assert (typed.event_id, typed.model_extra) == ("evt-typed", {"exchange": "XNAS"})
    # AND that is exactly the payload data_payload builds from the parsed event
    event = parse_upstream_event(raw)
    rendered = data_payload(MessageType.MARKET_DATA, event.detail, event.id).model_dump_json(exclude_none=True)
    assert json.dumps(payload, separators=(",", ":")) == rendered


def test_gone_connections_are_removed_once_per_batch(fanout: EventFanOut, store: FakeStore, removed: list[str]):
    # GIVEN a gone subscriber and a live one, both on every market data symbol
    store.subscribe("market_data:*", "gone")
    store.subscribe("market_data:*", "live")
    gateway(fanout).connect("live", "gone")
    gateway(fanout).gone.add("gone")
    # WHEN a batch with two events is processed
    fanout.process_events(eb.records(eb.market_data("AAPL"), eb.market_data("MSFT")))
    # THEN the gone connection was removed exactly once and the live one got both
    assert removed == ["gone"]
    assert [m["stream"] for m in gateway(fanout).messages("live")] == ["market_data:AAPL", "market_data:MSFT"]


# ---------------------------------------------------------------- conflation and the coalescing window


def _batch_messages(fanout: EventFanOut, connection_id: str) -> list[list[tuple[str, int]]]:
    """(stream, seq) of each frame one connection was posted, a frame being one post."""
    frames = []
    for raw in gateway(fanout).sent[connection_id]:
        message = json.loads(raw)
        inner = message["payload"]["messages"] if message["message_type"] == "batch" else [message]
        frames.append([(m["stream"], m["seq"]) for m in inner])
    return frames


def test_a_latest_only_subscriber_gets_the_newest_message_of_each_stream_in_its_post(
    fanout: EventFanOut, store: FakeStore
):
    # GIVEN a price board subscribed latest-only to every symbol, and a chart subscribed to every tick
    store.subscriptions["market_data:*"] += [
        Subscription("market_data:*", "board", "u", latest_only=True),
        Subscription("market_data:*", "chart", "u"),
    ]
    gateway(fanout).connect("board", "chart")

    # WHEN one batch holds three AAPL ticks and two MSFT ticks, interleaved
    response = fanout.process_events(
        eb.records(*(eb.market_data(symbol, price=p) for symbol, p in zip("AAMAM", range(1, 6), strict=True)))
    )

    # THEN the board got one post with only the newest of each stream, the chart one post with all five
    assert response == {"batchItemFailures": []}
    assert _batch_messages(fanout, "board") == [[("market_data:A", 3), ("market_data:M", 2)]]
    assert _batch_messages(fanout, "chart") == [
        [("market_data:A", 1), ("market_data:A", 2), ("market_data:M", 1), ("market_data:A", 3), ("market_data:M", 2)]
    ]
    assert fanout.metrics.totals["Conflated"] == 3  # type: ignore[attr-defined]


def test_delivery_chunks_of_one_batch_go_to_each_connection_in_one_post_conflated_where_asked(
    store: FakeStore, clock: Clock, removed: list[str]
):
    # GIVEN chunks of one connection (every audience goes to the delivery queue), a latest-only subscriber
    # and an every-tick subscriber of AAPL, and three AAPL ticks fanned out
    fanout = make_fanout(store, clock, removed, chunk_size=1)
    store.subscriptions["market_data:AAPL"] += [
        Subscription("market_data:AAPL", "board", "u", latest_only=True),
        Subscription("market_data:AAPL", "chart", "u"),
    ]
    gateway(fanout).connect("board", "chart")
    fanout.process_events(eb.records(*(eb.market_data(price=p) for p in (1, 2, 3))))
    chunks = sender(fanout).sent["delivery.fifo"]
    assert len(chunks) == 6

    # WHEN the delivery function gets all six chunks in one batch
    response = fanout.process_chunks([eb.delivery_record(chunk) for chunk in chunks])

    # THEN each connection got one post: the board only the newest tick, the chart all three in order
    assert response == {"batchItemFailures": []}
    assert _batch_messages(fanout, "board") == [[("market_data:AAPL", 3)]]
    assert _batch_messages(fanout, "chart") == [
        [("market_data:AAPL", 1), ("market_data:AAPL", 2), ("market_data:AAPL", 3)]
    ]
    assert fanout.metrics.totals["Delivered"] == 2  # type: ignore[attr-defined]


def _lingering_fanout(store: FakeStore, clock: Clock, window_ms: int, slept: list[float]) -> EventFanOut:
    settings = Settings(jwt_secret="s", session_secret="ss", coalesce_window_ms=window_ms)
    return EventFanOut(
        settings,
        store,  # type: ignore[arg-type]
        InMemoryGateway(),
        InMemorySender(),
        lambda _cid: None,
        CountingMetrics(),
        clock=clock,
        monotonic=clock,
        sleep=slept.append,
    )


@pytest.mark.parametrize("consumer", ["process_events", "process_chunks"])
def test_with_a_coalescing_window_a_batch_that_was_not_full_returns_a_window_after_it_started(
    store: FakeStore, clock: Clock, consumer: str
):
    # GIVEN a 100 ms coalescing window and a function that took 30 ms for its batch of two records
    slept: list[float] = []
    fanout = _lingering_fanout(store, clock, 100, slept)
    real_post_many = fanout.gateway.post_many

    def slow_post_many(posts: Any, deadline: float | None = None) -> Any:
        clock.now += 0.030
        return real_post_many(posts, deadline)

    fanout.gateway.post_many = slow_post_many  # type: ignore[method-assign]
    gateway(fanout).connect("c")
    store.subscribe("market_data:AAPL", "c")
    if consumer == "process_events":
        records = eb.records(eb.market_data(), eb.market_data())
    else:
        chunk = json.dumps({"data": '{"n":1}', "connections": ["c"]})
        records = [eb.sqs_record(chunk, group="g"), eb.sqs_record(chunk, group="g")]

    # WHEN it handles the batch
    getattr(fanout, consumer)(records)

    # THEN it waits the rest of the window before returning, so the queue's next batch gathers a window of events
    assert slept == [pytest.approx(0.070)]


def test_a_full_batch_or_no_window_never_waits(store: FakeStore, clock: Clock):
    # GIVEN a window and a full batch (a backlog: the next batch is full anyway), and no window with a short one
    slept: list[float] = []
    store.subscribe("market_data:AAPL", "c")
    _lingering_fanout(store, clock, 200, slept).process_events(eb.records(*[eb.market_data()] * 10))
    _lingering_fanout(store, clock, 0, slept).process_events(eb.records(eb.market_data()))
    # THEN neither waited
    assert slept == []


@pytest.mark.parametrize("window", [0, 50, 200])
def test_the_coalescing_window_is_off_or_50_to_200_ms(window: int):
    assert Settings(jwt_secret="s", session_secret="ss", coalesce_window_ms=window).coalesce_window_ms == window


@pytest.mark.parametrize(("window", "says"), [(20, "0 (off) or 50-200 ms"), (201, "less than or equal to 200")])
def test_a_coalescing_window_outside_the_bounds_is_refused_with_the_reason(window: int, says: str):
    with pytest.raises(ValueError, match=re.escape(says)):
        Settings(jwt_secret="s", session_secret="ss", coalesce_window_ms=window)
