"""Faults injected into the running local stack lose nothing: every subscriber ends with every seq once, in order.

The functions run as on AWS, in their own worker processes, so every fault is
injected where AWS itself would produce it, outside the functions:

* throttled DynamoDB: the AWS front door (`local.aws_front_door`) answers the
  fan-out function's calls (matched by its name): its next two GetItem calls
  with ProvisionedThroughputExceededException, which botocore retries through,
  and every TransactWriteItems (the seq transaction) with DynamoDB's
  TransactionCanceledException for a throttled item (reason ThrottlingError),
  which no SDK retries, until a record has failed on its second receive: the
  fault outlasts the store's own retries and an SQS redelivery;
* Management API 429 bursts: the gateway answers every post with API Gateway's
  429 LimitExceededException until a post has been throttled more times than
  a post has attempts: the fan-out retries throttling with jittered backoff
  until its invocation's deadline, so a burst shorter than that fails no record;
* connections the fan-out cannot reach through every redelivery: the gateway
  answers posts to them with 500 (what the Management API's retries end in);
  on the last receive before the DLQ they must be closed (or, when closing
  fails too, let go) and their clients resume;
* a fan-out function that dies mid-batch: the gateway holds the batch's posts
  (to everyone, or to everyone but one raw subscriber, who gets the batch) and
  the fan-out's busy execution environment is killed meanwhile, as an
  out-of-memory kill would (`LambdaFunction.kill_busy_environments`): Lambda
  fails the whole batch.

What happened to each batch is read from the fan-out's event source mapping
(the pump's `BatchOutcome`s: receive counts, failed records, invocation
errors), what the gateway did from its record of Management API calls and its
fault counters.

Failed records come back after the events queue's visibility timeout,
shortened to 3 s by the e2e stack (StackConfig.queue_visibility_timeout), so a
redelivery costs seconds instead of a minute.

Subscribers: two raw `websockets` clients that resume when closed (holding
back what arrives while resuming and ordering it by seq, as a client must) and
one `QuantTradeClient`. Every data message is recorded as it arrives,
duplicates included; after de-duplication by (stream, seq) the first copies
must be exactly seqs 1..N in order, each published event must hold exactly one of
them, and every copy of a seq must be the same event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import websockets
from quanttrade_client import QuantTradeClient

from local.api_gateway.server import LocalGateway
from local.lambda_runtime.function import LambdaFunction
from local.pump import BatchOutcome, QueuePump
from local.stack.local_stack import LocalStack
from quanttrade_ws import topology
from tests.e2e.conftest import eventually, unpack

pytestmark = pytest.mark.e2e

EVENTS = 30  # MarketData ticks per test, one stream
DELIVERED = 45.0  # seconds for every subscriber to hold every seq after the fault, on a busy 2-core machine
HELD_SECONDS = 30.0  # how long the gateway holds a post of a batch whose fan-out is about to die

Publish = Callable[[str, dict[str, Any]], str]


# ---------------------------------------------------------------- what the stack shows


def fanout_of(stack: LocalStack) -> LambdaFunction:
    return stack.function("fanout.handler")


class FanOutBatches:
    """The fan-out's batches since the test began, as its event source mapping saw them."""

    def __init__(self, pump: QueuePump) -> None:
        self.pump = pump
        # The outcomes already there (alive while the pump keeps them, so their ids are theirs alone).
        self._before = {id(outcome) for outcome in list(pump.stats.outcomes)}

    @property
    def batches(self) -> list[BatchOutcome]:
        return [outcome for outcome in list(self.pump.stats.outcomes) if id(outcome) not in self._before]

    def failed_on_receive(self, receive: int) -> bool:
        """Whether a batch holding a record on its `receive`-th receive failed (a record or the whole batch)."""
        return any(b.failed_records and max(b.receive_counts) >= receive for b in self.batches)

    @property
    def redelivered(self) -> bool:
        return any(batch.redelivered for batch in self.batches)

    @property
    def deaths(self) -> list[BatchOutcome]:
        """Batches whose invocation died (the runtime exited): Lambda failed them whole."""
        return [b for b in self.batches if b.error is not None and b.error.startswith("Runtime.ExitError")]


@pytest.fixture
def fanout_batches(local_stack: LocalStack) -> FanOutBatches:
    fanout = fanout_of(local_stack)
    return FanOutBatches(next(pump for pump in local_stack.pumps if pump.function is fanout))


def gateway_of(stack: LocalStack) -> LocalGateway:
    assert stack.gateway is not None
    return stack.gateway


# ---------------------------------------------------------------- subscribers


def dedup(arrivals: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """The first copy of each seq, in arrival order: what a client that drops seen (stream, seq) keeps."""
    seen: set[int] = set()
    kept = []
    for seq, event_id in arrivals:
        if seq not in seen:
            seen.add(seq)
            kept.append((seq, event_id))
    return kept


class RawSubscriber:
    """A plain `websockets` client of one stream that resumes when the server closes it."""

    def __init__(self, url: str, token: str, stream: str, name: str) -> None:
        self.url = f"{url}?token={token}"
        self.stream = stream
        self.name = name
        self.arrivals: list[tuple[int, str]] = []  # (seq, event_id) of every copy, in the order it was taken
        self.resumes = 0
        self.problems: list[str] = []
        self.session_token = ""
        self.client_id = ""
        self._ws: Any = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> None:
        self._ws = await websockets.connect(self.url, open_timeout=10, max_size=None)
        hello = await self._request("hello")
        self.session_token = hello["payload"]["session_token"]
        self.client_id = hello["payload"]["client_id"]
        symbol = self.stream.split(":", 1)[1]
        subscribed = await self._request("subscribe", streams=[{"stream_type": "market_data", "symbol": symbol}])
        assert subscribed["message_type"] == "subscribe", subscribed
        self._task = asyncio.create_task(self._read(), name=f"subscriber-{self.name}")

    async def stop(self) -> None:
        self._stopping = True
        if self._ws is not None:
            await self._ws.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def seqs(self) -> set[int]:
        return {seq for seq, _ in self.arrivals}

    def contiguous(self) -> int:
        """The last seq up to which nothing is missing: where a resume must start."""
        have, last = self.seqs(), 0
        while last + 1 in have:
            last += 1
        return last

    async def _request(self, action: str, **fields: Any) -> dict[str, Any]:
        """Before the reader runs: send and read until the reply (a new stream has no data yet)."""
        request_id = f"{action}-{uuid.uuid4().hex[:8]}"
        await self._ws.send(json.dumps({"action": action, "request_id": request_id, **fields}))
        async with asyncio.timeout(10):
            while True:
                for message in unpack(json.loads(await self._ws.recv())):
                    if message.get("request_id") == request_id:
                        return message
                    self._take([message])

    def _take(self, messages: list[dict[str, Any]]) -> None:
        for message in messages:
            if message.get("stream") == self.stream and isinstance(message.get("seq"), int):
                self.arrivals.append((message["seq"], message["payload"]["event_id"]))

    async def _read(self) -> None:
        while not self._stopping:
            with contextlib.suppress(websockets.ConnectionClosed):
                async for frame in self._ws:
                    self._take(unpack(json.loads(frame)))
            if not self._stopping:
                await self._resume()

    async def _resume(self) -> None:
        self.resumes += 1
        for attempt in range(20):
            try:
                self._ws = await websockets.connect(self.url, open_timeout=10, max_size=None)
                break
            except (OSError, websockets.InvalidStatus) as error:
                self.problems.append(f"reconnect {attempt}: {error!r}")
                await asyncio.sleep(0.2)  # a reconnect backoff, not a wait for an outcome
        request_id = f"resume-{uuid.uuid4().hex[:8]}"
        await self._ws.send(
            json.dumps(
                {
                    "action": "resume",
                    "request_id": request_id,
                    "session_token": self.session_token,
                    "last_seq": {self.stream: self.contiguous()},
                }
            )
        )
        # Replayed and live copies interleave until the reply; they are held back and ordered by seq.
        held: list[dict[str, Any]] = []
        async with asyncio.timeout(15):
            while True:
                reply = None
                for message in unpack(json.loads(await self._ws.recv())):
                    if message.get("request_id") == request_id:
                        reply = message
                    else:
                        held.append(message)
                if reply is not None:
                    break
        if reply.get("message_type") != "resumed":
            self.problems.append(f"resume refused: {reply}")
        else:
            self.session_token = reply["payload"]["session_token"]
            if self.stream not in reply["payload"]["subscriptions"]:
                self.problems.append(f"resumed without its subscription: {reply['payload']}")
        self._take(sorted((m for m in held if isinstance(m.get("seq"), int)), key=lambda m: m["seq"]))
        self._take([m for m in held if not isinstance(m.get("seq"), int)])


class ClientSubscriber:
    """The Python client (reconnects, resumes, drops duplicates by (stream, seq)), recording what it yields."""

    def __init__(self, url: str, token: str, stream: str, keepalive: float = 240.0, **options: Any) -> None:
        self.name = "quanttrade_client"
        self.stream = stream
        options = {"backoff_base": 0.1, "backoff_max": 1.0, "request_timeout": 3.0, **options}
        self.client = QuantTradeClient(url, token=token, keepalive_interval=keepalive, **options)
        self.arrivals: list[tuple[int, str]] = []
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.client.connect()
        await self.client.subscribe("market_data", symbol=self.stream.split(":", 1)[1])
        self._task = asyncio.create_task(self._collect())

    async def _collect(self) -> None:
        async for message in self.client:
            if message.stream == self.stream and message.seq is not None:
                self.arrivals.append((message.seq, str(message.payload["event_id"])))

    async def stop(self) -> None:
        await self.client.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def seqs(self) -> set[int]:
        return {seq for seq, _ in self.arrivals}


Subscriber = RawSubscriber | ClientSubscriber


@pytest.fixture
async def subscribers(
    local_stack: LocalStack, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[str, list[Subscriber]]]:
    """Three subscribers of a stream no other test uses, so its seqs start at 1. Indirect parameter: the
    Python client's keepalive interval (its ping finds out a connection the server no longer answers on)."""
    symbol = f"F{uuid.uuid4().hex[:8].upper()}"
    stream = f"market_data:{symbol}"
    url = local_stack.websocket_url
    group: list[Subscriber] = [
        RawSubscriber(url, local_stack.token("raw-1"), stream, "raw-1"),
        RawSubscriber(url, local_stack.token("raw-2"), stream, "raw-2"),
        ClientSubscriber(url, local_stack.token("client-1"), stream, keepalive=getattr(request, "param", 240.0)),
    ]
    try:
        for subscriber in group:
            await subscriber.start()
        yield stream, group
    finally:
        for subscriber in group:
            await subscriber.stop()


def tick(symbol: str, index: int) -> dict[str, Any]:
    price = 100.0 + index / 100
    return {
        "symbol": symbol,
        "price": price,
        "bid": round(price - 0.01, 2),
        "ask": round(price + 0.01, 2),
        "volume": 100.0 + index,
        "timestamp": "2026-03-02T14:30:00Z",
    }


def publish_ticks(publish: Publish, stream: str, first: int = 1, last: int = EVENTS) -> list[str]:
    symbol = stream.split(":", 1)[1]
    return [publish("MarketData", tick(symbol, index)) for index in range(first, last + 1)]


async def first_tick_everywhere(publish: Publish, stream: str, group: list[Subscriber]) -> list[str]:
    """Publish seq 1 and wait until every subscriber has it: each then has a place to resume from."""
    event_ids = publish_ticks(publish, stream, 1, 1)
    await eventually(lambda: all(1 in s.seqs() for s in group), timeout=DELIVERED, what="seq 1 everywhere")
    return event_ids


async def wait_until_complete(group: list[Subscriber]) -> None:
    wanted = set(range(1, EVENTS + 1))

    def missing() -> dict[str, list[int]]:
        return {s.name: sorted(wanted - s.seqs()) for s in group if not wanted <= s.seqs()}

    try:
        await eventually(lambda: not missing(), timeout=DELIVERED, what=f"every subscriber to hold seqs 1..{EVENTS}")
    except AssertionError as timed_out:
        raise AssertionError(f"{timed_out}; missing: {missing()}") from None


def dead_letters(stack: LocalStack) -> int:
    """Messages in the DLQ of the queue the fan-out consumes (visible or not)."""
    template = stack.template
    fanout_id = next(lid for lid, function in stack.functions.items() if function is fanout_of(stack))
    mapping = next(m for m in template.event_source_mappings.values() if m.function_logical_id == fanout_id)
    dlq = template.queues[mapping.queue_logical_id].dead_letter_queue
    assert dlq is not None, "the fan-out's queue has no DLQ"
    attributes = stack.client("sqs").get_queue_attributes(
        QueueUrl=stack.queue_urls()[dlq],
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return sum(int(value) for value in attributes.values())


def assert_every_seq_once_in_order(subscriber: Subscriber, event_ids: list[str]) -> None:
    kept = dedup(subscriber.arrivals)
    assert [seq for seq, _ in kept] == list(range(1, EVENTS + 1)), (subscriber.name, kept)
    # every published event holds one seq, and every copy of a seq (redelivered, replayed) is that same event.
    # Seq order is the order the events entered their FIFO group, which the pipe's concurrent pollers may make
    # differ from the publish order (docs/adr/0002-one-message-group-per-stream.md, "What order is guaranteed").
    assert sorted(event_id for _, event_id in kept) == sorted(event_ids), subscriber.name
    event_of_seq = dict(kept)
    assert all(event_id == event_of_seq[seq] for seq, event_id in subscriber.arrivals), subscriber.name
    if isinstance(subscriber, RawSubscriber):
        assert not subscriber.problems, (subscriber.name, subscriber.problems)


# ---------------------------------------------------------------- (a) throttled DynamoDB during fan-out


async def test_throttled_dynamodb_during_fan_out_loses_nothing(
    local_stack: LocalStack,
    subscribers: tuple[str, list[Subscriber]],
    publish: Publish,
    fanout_batches: FanOutBatches,
) -> None:
    # GIVEN three subscribers of one stream, and DynamoDB throttling the fan-out: its next two reads, and
    # every seq transaction (cancelled for a throttled item)
    stream, group = subscribers
    door = local_stack.front_door
    assert door is not None
    fanout = fanout_of(local_stack).name
    reads = door.add_fault_rule(
        "dynamodb", "ProvisionedThroughputExceededException", operation="GetItem", function=fanout, count=2
    )
    writes = door.add_fault_rule(
        "dynamodb",
        "TransactionCanceledException",
        operation="TransactWriteItems",
        function=fanout,
        reasons=("None", "None", "ThrottlingError"),
    )
    try:
        # WHEN 30 ticks are published, and the throttling lasts until a record failed again after a redelivery
        event_ids = publish_ticks(publish, stream)
        await eventually(
            lambda: fanout_batches.failed_on_receive(2), timeout=20, what="a failure on the second receive"
        )
        door.remove_fault_rule(writes)

        # THEN every subscriber ends up with every seq once, in order
        await wait_until_complete(group)
    finally:
        door.remove_fault_rule(reads)
        door.remove_fault_rule(writes)
    for subscriber in group:
        assert_every_seq_once_in_order(subscriber, event_ids)
    # ... and the faults were real: the store retried the throttled read with its own backoff (each try a
    # first botocore attempt: botocore's retries are off on the store's client, so the two never multiply),
    # the cancelled seq transactions failed records after the store's own retries, and SQS redelivered them
    assert reads.attempts == {1: 2}, reads.attempts
    assert writes.injected >= 2
    assert fanout_batches.redelivered


# ---------------------------------------------------------------- (b) Management API 429 bursts


async def test_management_api_429_bursts_are_ridden_out_within_the_invocation_and_lose_nothing(
    local_stack: LocalStack,
    subscribers: tuple[str, list[Subscriber]],
    publish: Publish,
    fanout_batches: FanOutBatches,
) -> None:
    # GIVEN three subscribers of one stream
    stream, group = subscribers
    assert local_stack.settings is not None
    attempts = local_stack.settings.max_post_attempts
    # WHEN 30 ticks go out while API Gateway throttles every post, until a post has been throttled more times
    # than a post has attempts (throttling is retried until the invocation's deadline, not counted against them)
    with gateway_of(local_stack).management_fault("throttle") as burst:
        event_ids = publish_ticks(publish, stream)
        await eventually(
            lambda: max(burst.by_connection.values(), default=0) > attempts,
            timeout=20,
            what="a post throttled more times than it has attempts",
        )

    # THEN every subscriber ends up with every seq once, in order
    await wait_until_complete(group)
    for subscriber in group:
        assert_every_seq_once_in_order(subscriber, event_ids)
    # ... and the burst was real, and ridden out by the invocations it met: every subscriber's posts were
    # throttled, and no record failed for it (none waited a visibility timeout for its redelivery)
    assert len(burst.by_connection) == len(group)
    assert all(count >= 2 for count in burst.by_connection.values()), burst.by_connection
    assert not fanout_batches.failed_on_receive(1)


# ---------------------------------------------------------------- (b') unreachable through every redelivery


def connection_ids(group: list[Subscriber]) -> dict[str, Subscriber]:
    ids: dict[str, Subscriber] = {}
    for subscriber in group:
        ids[subscriber.client_id if isinstance(subscriber, RawSubscriber) else str(subscriber.client.client_id)] = (
            subscriber
        )
    return ids


def resumed(subscriber: Subscriber) -> int:
    return subscriber.resumes if isinstance(subscriber, RawSubscriber) else subscriber.client.reconnects


async def test_a_connection_unreachable_through_every_redelivery_is_closed_on_the_last_receive_and_resumes(
    local_stack: LocalStack,
    subscribers: tuple[str, list[Subscriber]],
    publish: Publish,
    fanout_batches: FanOutBatches,
) -> None:
    # GIVEN three subscribers of one stream that have its first tick, two of which the fan-out then cannot
    # reach: API Gateway answers every post to them with 500, whatever the fan-out retries
    stream, group = subscribers
    by_id = connection_ids(group)
    victims = {cid for cid, s in by_id.items() if s.name in ("raw-2", "quanttrade_client")}
    event_ids = await first_tick_everywhere(publish, stream, group)
    with gateway_of(local_stack).management_fault("error", connections=victims) as unreachable:
        # WHEN 29 more ticks are published
        event_ids += publish_ticks(publish, stream, 2)

        # THEN on the last receive before the DLQ the unreachable connections are closed, their clients
        # resume, and every subscriber ends up with every seq once, in order; nothing is dead-lettered
        await wait_until_complete(group)
    for subscriber in group:
        assert_every_seq_once_in_order(subscriber, event_ids)
    assert set(unreachable.by_connection) == victims
    assert fanout_batches.failed_on_receive(topology.EVENTS_QUEUE.max_receive_count - 1)
    closed = [call.connection_id for call in gateway_of(local_stack).management_calls if call.method == "DELETE"]
    assert sorted(cid for cid in closed if cid in victims) == sorted(victims)
    assert [resumed(s) >= 1 for s in group] == [s.name != "raw-1" for s in group]
    assert dead_letters(local_stack) == 0


@pytest.mark.parametrize("subscribers", [1.0], indirect=True, ids=["client-keepalive-1s"])
async def test_a_connection_that_cannot_even_be_closed_on_the_last_receive_is_dropped_and_its_client_resumes(
    local_stack: LocalStack,
    subscribers: tuple[str, list[Subscriber]],
    publish: Publish,
    fanout_batches: FanOutBatches,
) -> None:
    # GIVEN three subscribers of one stream that have its first tick; then API Gateway fails every post of
    # the fan-out to the Python client, and every attempt of the fan-out to close its connection (the message
    # function still answers the client's pings on it)
    stream, group = subscribers
    victim = next(cid for cid, s in connection_ids(group).items() if isinstance(s, ClientSubscriber))
    event_ids = await first_tick_everywhere(publish, stream, group)
    with gateway_of(local_stack).management_fault(
        "error", connections=[victim], methods=["POST", "DELETE"], caller=fanout_of(local_stack).name
    ) as unreachable:
        # WHEN 29 more ticks are published
        event_ids += publish_ticks(publish, stream, 2)

        # THEN the group moves on instead of dead-lettering, and the client, which gets no answer on a
        # connection the server let go of, reconnects and resumes: everyone holds every seq once, in order
        await wait_until_complete(group)
    for subscriber in group:
        assert_every_seq_once_in_order(subscriber, event_ids)
    assert unreachable.by_method["DELETE"] >= 1  # the fan-out tried to close it, and failed
    assert fanout_batches.failed_on_receive(topology.EVENTS_QUEUE.max_receive_count - 1)
    assert dead_letters(local_stack) == 0
    assert [resumed(s) >= 1 for s in group] == [isinstance(s, ClientSubscriber) for s in group]


# ---------------------------------------------------------------- (c) a fan-out function that dies mid-batch


@pytest.mark.parametrize("posts_before_death", [1, 0], ids=["after-the-first-post", "after-sequencing-before-posts"])
async def test_a_fan_out_that_dies_mid_batch_loses_nothing(
    local_stack: LocalStack,
    subscribers: tuple[str, list[Subscriber]],
    publish: Publish,
    fanout_batches: FanOutBatches,
    posts_before_death: int,
) -> None:
    # GIVEN three subscribers of one stream, and API Gateway holding the posts of the fan-out's batch (to
    # everyone but one raw subscriber, who gets the batch, or to everyone)
    stream, group = subscribers
    ids = connection_ids(group)
    first = next(cid for cid, s in ids.items() if s.name == "raw-1")
    held = set(ids) - {first} if posts_before_death else set(ids)
    gateway = gateway_of(local_stack)
    fanout = fanout_of(local_stack)
    with gateway.management_fault("delay", connections=held, delay=HELD_SECONDS) as hold:
        # WHEN 30 ticks are published, and while the posts are held the fan-out's execution environment dies:
        # its records already have their seqs, and one raw subscriber may already have the batch
        event_ids = publish_ticks(publish, stream)
        await eventually(
            lambda: set(hold.by_connection) == held and all(ids[cid].seqs() for cid in set(ids) - held),
            timeout=20,
            what="the batch delivered to whoever is not held, and held for the others",
        )
        before_death = {s.name: len(s.arrivals) for s in group}
        assert fanout.kill_busy_environments() == 1

    # THEN every subscriber ends up with every seq once, in order
    await wait_until_complete(group)
    for subscriber in group:
        assert_every_seq_once_in_order(subscriber, event_ids)
    # ... and the death was real: one invocation died and its whole batch came back
    assert len(fanout_batches.deaths) == 1, fanout_batches.batches
    assert fanout_batches.redelivered
    # ... and whoever got the batch before the death got it again (as duplicates, dropped by seq)
    got_it = sorted(name for name, count in before_death.items() if count)
    assert got_it == (["raw-1"] if posts_before_death else []), before_death
    for subscriber in group:
        if subscriber.name in got_it:
            assert len(subscriber.arrivals) > len(dedup(subscriber.arrivals)), subscriber.name


# ---------------------------------------------------------------- a drop before the first message


async def test_a_client_dropped_before_its_first_message_gets_what_it_missed(
    local_stack: LocalStack, publish: Publish, management: Any
) -> None:
    # GIVEN a raw witness and the Python client subscribed to a stream that has had no tick yet; the client
    # comes back exactly 3 s after a drop
    stream = f"market_data:F{uuid.uuid4().hex[:8].upper()}"
    url = local_stack.websocket_url
    witness = RawSubscriber(url, local_stack.token("witness"), stream, "witness")
    late = ClientSubscriber(url, local_stack.token("late"), stream, backoff_base=3.0, backoff_max=3.0, rng=lambda: 1.0)
    await witness.start()
    await late.start()
    try:
        # WHEN its connection is dropped and three ticks are sequenced while it is away
        await asyncio.to_thread(management.delete_connection, ConnectionId=late.client.client_id)
        event_ids = publish_ticks(publish, stream, 1, 3)
        await eventually(lambda: {1, 2, 3} <= witness.seqs(), timeout=DELIVERED, what="the witness has seqs 1-3")
        assert late.client.reconnects == 0, "the client came back too soon for this test to mean anything"

        # THEN once it is back and the next tick arrives, it holds every seq
        await eventually(lambda: late.client.reconnects >= 1, timeout=10, what="the client's reconnect")
        event_ids += publish_ticks(publish, stream, 4, 4)
        await eventually(lambda: 4 in late.seqs() and 4 in witness.seqs(), timeout=DELIVERED, what="the fourth tick")
        kept = dedup(late.arrivals)
        assert [seq for seq, _ in kept] == [1, 2, 3, 4]
        # Every published event holds one seq, the same one the witness got it with. Seq order is the order the
        # events entered their FIFO group, which the pipe's concurrent pollers may make differ from the publish
        # order (docs/adr/0002-one-message-group-per-stream.md, "What order is guaranteed").
        assert sorted(event_id for _, event_id in kept) == sorted(event_ids)
        assert kept == dedup(witness.arrivals)
    finally:
        await late.stop()
        await witness.stop()
