"""Faults injected into the running local stack lose nothing: every subscriber ends with every seq once, in order.

The stack runs its Lambda handlers in this process, all on one cached
`quanttrade_ws.runtime.runtime()` (on AWS each function has its own; here they
share it), so a test reaches the very objects the fan-out function uses:

* throttled DynamoDB: a botocore `before-send` hook on the runtime's DynamoDB
  client answers the calls made on the fan-out function's worker threads
  (`lambda-quanttrade-fanout*`) with a real ProvisionedThroughputExceededException
  response. botocore parses it as it would AWS's answer and the store retries it
  (its own bounded, jittered attempts: botocore's retries are off on its
  client), and the fault lasts until a record has failed on its second receive,
  so it outlasts the store's retries and an SQS redelivery;
* Management API 429 bursts: `gateway_limits(management_rate_per_second=1, management_burst=1)`
  while the ticks go out, so the fan-out's posts run out of their jittered
  retries and its records fail;
* connections the fan-out cannot reach through every redelivery: the fan-out's
  gateway is wrapped so posts to them fail as after the Management API's
  retries; on the last receive before the DLQ they must be closed (or, when
  closing fails too, let go) and their clients resume;
* a fan-out function that dies mid-batch: the fan-out's gateway is wrapped so
  that, once, the invocation raises after the first post (or after sequencing
  the batch, before any post): Lambda fails the whole batch.

Failed records come back after the events queue's visibility timeout, shortened
to VISIBILITY_SECONDS (StackConfig.queue_visibility_timeout), so a redelivery
costs seconds instead of a minute.

Subscribers: two raw `websockets` clients that resume when closed (holding
back what arrives while resuming and ordering it by seq, as a client must) and
one `QuantTradeClient`. Every data message is recorded as it arrives,
duplicates included; after de-duplication by (stream, seq) the first copies
must be exactly seqs 1..N in order, and seq k must be the k-th published event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
import websockets
from botocore.awsrequest import AWSResponse
from botocore.compat import HTTPHeaders

from local.stack import BackgroundStack, LocalStack, StackConfig
from quanttrade_ws import topology
from quanttrade_ws.gateway import DeliveryReport, GatewayError, Post
from quanttrade_ws.runtime import runtime
from tests.e2e.conftest import E2E_SECRET, eventually, unpack

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "clients" / "python"))

from quanttrade_client import QuantTradeClient

pytestmark = pytest.mark.e2e

EVENTS = 30  # MarketData ticks per test, one stream
VISIBILITY_SECONDS = 3
FANOUT_THREADS = f"lambda-quanttrade-{topology.FANOUT.name}"
DELIVERED = 45.0  # seconds for every subscriber to hold every seq after the fault, on a busy 2-core machine

Publish = Callable[[str, dict[str, Any]], str]


# ---------------------------------------------------------------- the stack


@pytest.fixture(scope="module")
def local_stack() -> Iterator[LocalStack]:
    """This module's stack (it overrides conftest's): botocore capped at 3 attempts, redelivery after 3 s."""
    with pytest.MonkeyPatch.context() as env:
        # Read by botocore when the handlers' runtime builds its clients (after the stack starts).
        env.setenv("AWS_RETRY_MODE", "legacy")
        env.setenv("AWS_MAX_ATTEMPTS", "3")
        background = BackgroundStack(
            StackConfig(
                gateway_port=0,
                moto_port=0,
                jwt_secret=E2E_SECRET,
                sweep_interval=None,
                simulator=False,
                connect_rate_per_second=None,
                queue_visibility_timeout=VISIBILITY_SECONDS,
            )
        )
        stack = background.start()
        try:
            # Build the handlers' runtime and its fan-out now, before any invocation can race to build them.
            assert runtime().fanout is not None
            yield stack
        finally:
            background.stop()


# ---------------------------------------------------------------- spies and faults


class FanOutSpy:
    """Watches the fan-out's batches (receive counts, failures, deaths) without changing what it does."""

    def __init__(self) -> None:
        self.fanout = runtime().fanout
        self._real = self.fanout.process_events
        self.batches: list[tuple[list[int], int, bool]] = []  # (receive counts, failed records, raised)

    def __call__(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        counts = [int(r.get("attributes", {}).get("ApproximateReceiveCount", "1")) for r in records]
        try:
            answer = self._real(records)
        except BaseException:
            self.batches.append((counts, len(records), True))
            raise
        self.batches.append((counts, len(answer["batchItemFailures"]), False))
        return answer

    def failed_on_receive(self, receive: int) -> bool:
        """Whether a batch holding a record on its `receive`-th receive failed (a record or the whole batch)."""
        return any(failed and max(counts) >= receive for counts, failed, _ in self.batches)

    @property
    def redelivered(self) -> bool:
        return any(max(counts) >= 2 for counts, _, _ in self.batches)

    @property
    def deaths(self) -> int:
        return sum(raised for _, _, raised in self.batches)


@pytest.fixture
def fanout_spy() -> Iterator[FanOutSpy]:
    spy = FanOutSpy()
    spy.fanout.process_events = spy  # an instance attribute shadows the method
    try:
        yield spy
    finally:
        del spy.fanout.process_events


class _RawBody(BytesIO):
    """What botocore reads an HTTP response body from (urllib3's `stream()`)."""

    def stream(self, **_: Any) -> Iterator[bytes]:
        while chunk := self.read(8192):
            yield chunk


class ThrottleFanOutDynamoDB:
    """A `before-send` hook: while on, the fan-out's DynamoDB requests get DynamoDB's throttling answer."""

    BODY = json.dumps(
        {
            "__type": "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException",
            "message": "The level of configured provisioned throughput for the table was exceeded.",
        }
    ).encode()

    def __init__(self) -> None:
        self.on = False
        self.throttled = 0
        self.attempts: set[int] = set()  # botocore's attempt numbers that were throttled
        self._lock = threading.Lock()

    def __call__(self, request: Any, **_: Any) -> AWSResponse | None:
        if not self.on or not threading.current_thread().name.startswith(FANOUT_THREADS):
            return None
        header = request.headers.get("amz-sdk-request", b"")
        header = header.decode() if isinstance(header, bytes) else header
        with self._lock:
            self.throttled += 1
            if "attempt=" in header:
                self.attempts.add(int(header.split("attempt=")[1].split(";")[0]))
        return AWSResponse(
            request.url,
            400,
            HTTPHeaders.from_dict({"x-amzn-RequestId": uuid.uuid4().hex, "Content-Type": "application/x-amz-json-1.0"}),
            _RawBody(self.BODY),
        )


class FanOutGateway:
    """Stands in for the fan-out's connection gateway: counts what its posts met, and can fail some of them.

    `die_after`: once, that many posts (preferably to connections in `first_to`) go out, then the invocation
    dies. `unreachable`: posts to these connections fail as they would after the Management API's retries
    (5xx, timeouts) until the fan-out closes them; `close_fails`: and closing them fails too.
    """

    def __init__(
        self,
        real: Any,
        die_after: int | None = None,
        first_to: frozenset[str] = frozenset(),
        unreachable: frozenset[str] = frozenset(),
        close_fails: bool = False,
    ) -> None:
        self.real = real
        self.die_after = die_after
        self.first_to = first_to
        self.unreachable = set(unreachable)
        self.close_fails = close_fails
        self.throttle_retries = 0
        self.failed_posts = 0
        self.posted_before_death: list[str] = []
        self.died = False
        self.closed: list[str] = []
        self.close_failures = 0

    def post_many(self, posts: Sequence[Post]) -> DeliveryReport:
        if self.die_after is not None and not self.died and len(posts) > self.die_after:
            self.died = True
            ordered = sorted(posts, key=lambda post: post.connection_id not in self.first_to)
            before = self.real.post_many(ordered[: self.die_after])
            assert len(before.delivered) == self.die_after, "the posts before the death must have gone out"
            self.posted_before_death = [post.connection_id for post in before.delivered]
            # Outside the fan-out's per-record error handling: the invocation fails, as a crash would.
            raise RuntimeError("fan-out died mid-batch (injected)")
        blocked = [post for post in posts if post.connection_id in self.unreachable]
        report: DeliveryReport = self.real.post_many([post for post in posts if post not in blocked])
        report.failed.extend(blocked)
        self.throttle_retries += report.throttle_retries
        self.failed_posts += len(report.failed)
        return report

    def close(self, connection_id: str) -> None:
        if self.close_fails and connection_id in self.unreachable:
            self.close_failures += 1
            raise GatewayError(f"closing {connection_id} failed after 6 attempt(s): HTTP 429 LimitExceededException")
        self.unreachable.discard(connection_id)
        self.closed.append(connection_id)
        self.real.close(connection_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


@contextlib.contextmanager
def fanout_gateway(**options: Any) -> Iterator[FanOutGateway]:
    fanout = runtime().fanout
    real = fanout.gateway
    fanout.gateway = wrapper = FanOutGateway(real, **options)
    try:
        yield wrapper
    finally:
        fanout.gateway = real


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
    """Messages in the events queue's DLQ (visible or not)."""
    attributes = stack.client("sqs").get_queue_attributes(
        QueueUrl=stack.queues[topology.EVENTS_QUEUE.logical_id].dlq_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return sum(int(value) for value in attributes.values())


def assert_every_seq_once_in_order(subscriber: Subscriber, event_ids: list[str]) -> None:
    kept = dedup(subscriber.arrivals)
    assert [seq for seq, _ in kept] == list(range(1, EVENTS + 1)), (subscriber.name, kept)
    # seq k is the k-th event published, and every copy of a seq (redelivered, replayed) is that same event
    assert [event_id for _, event_id in kept] == event_ids, subscriber.name
    assert all(event_id == event_ids[seq - 1] for seq, event_id in subscriber.arrivals), subscriber.name
    if isinstance(subscriber, RawSubscriber):
        assert not subscriber.problems, (subscriber.name, subscriber.problems)


# ---------------------------------------------------------------- (a) throttled DynamoDB during fan-out


async def test_throttled_dynamodb_during_fan_out_loses_nothing(
    local_stack: LocalStack,
    subscribers: tuple[str, list[Subscriber]],
    publish: Publish,
    fanout_spy: FanOutSpy,
) -> None:
    # GIVEN three subscribers of one stream, and the fan-out's DynamoDB throttling every request
    stream, group = subscribers
    throttle = ThrottleFanOutDynamoDB()
    events = runtime().store._db.meta.events
    events.register("before-send.dynamodb", throttle)
    try:
        throttle.on = True
        # WHEN 30 ticks are published, and the throttling lasts until a record failed again after a redelivery
        event_ids = publish_ticks(publish, stream)
        await eventually(lambda: fanout_spy.failed_on_receive(2), timeout=20, what="a failure on the second receive")
        throttle.on = False

        # THEN every subscriber ends up with every seq once, in order
        await wait_until_complete(group)
    finally:
        throttle.on = False
        events.unregister("before-send.dynamodb", throttle)
    for subscriber in group:
        assert_every_seq_once_in_order(subscriber, event_ids)
    # ... and the fault was real: the store retried throttled calls (each a single botocore attempt) and gave up,
    # SQS redelivered
    assert throttle.attempts == {1}, throttle.attempts
    assert throttle.throttled >= runtime().store.backoff.attempts

    assert fanout_spy.redelivered


# ---------------------------------------------------------------- (b) Management API 429 bursts


async def test_management_api_429_bursts_lose_nothing(
    local_stack: LocalStack,
    subscribers: tuple[str, list[Subscriber]],
    publish: Publish,
    fanout_spy: FanOutSpy,
) -> None:
    # GIVEN three subscribers of one stream
    stream, group = subscribers
    with fanout_gateway() as gateway:
        # WHEN 30 ticks go out while the Management API allows one call a second, until a post has failed
        with local_stack.gateway_limits(management_rate_per_second=1.0, management_burst=1):
            event_ids = publish_ticks(publish, stream)
            await eventually(
                lambda: gateway.failed_posts > 0 and fanout_spy.failed_on_receive(1),
                timeout=20,
                what="a post that ran out of retries and failed its record",
            )

        # THEN every subscriber ends up with every seq once, in order
        await wait_until_complete(group)
    for subscriber in group:
        assert_every_seq_once_in_order(subscriber, event_ids)
    # ... and the burst was real: 429s were retried with backoff, some posts still failed, SQS redelivered
    assert gateway.throttle_retries > 0
    assert fanout_spy.redelivered


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
    fanout_spy: FanOutSpy,
) -> None:
    # GIVEN three subscribers of one stream that have its first tick, two of which the fan-out then cannot
    # reach, whatever it retries
    stream, group = subscribers
    by_id = connection_ids(group)
    victims = {cid for cid, s in by_id.items() if s.name in ("raw-2", "quanttrade_client")}
    event_ids = await first_tick_everywhere(publish, stream, group)
    with fanout_gateway(unreachable=frozenset(victims)) as gateway:
        # WHEN 29 more ticks are published
        event_ids += publish_ticks(publish, stream, 2)

        # THEN on the last receive before the DLQ the unreachable connections are closed, their clients
        # resume, and every subscriber ends up with every seq once, in order; nothing is dead-lettered
        await wait_until_complete(group)
    for subscriber in group:
        assert_every_seq_once_in_order(subscriber, event_ids)
    assert fanout_spy.failed_on_receive(topology.EVENTS_QUEUE.max_receive_count - 1)
    assert sorted(gateway.closed) == sorted(victims)
    assert [resumed(s) >= 1 for s in group] == [s.name != "raw-1" for s in group]
    assert dead_letters(local_stack) == 0


@pytest.mark.parametrize("subscribers", [1.0], indirect=True, ids=["client-keepalive-1s"])
async def test_a_connection_that_cannot_even_be_closed_on_the_last_receive_is_dropped_and_its_client_resumes(
    local_stack: LocalStack,
    subscribers: tuple[str, list[Subscriber]],
    publish: Publish,
    fanout_spy: FanOutSpy,
) -> None:
    # GIVEN three subscribers of one stream that have its first tick; then the fan-out cannot reach the Python
    # client, nor close its connection
    stream, group = subscribers
    victim = next(cid for cid, s in connection_ids(group).items() if isinstance(s, ClientSubscriber))
    event_ids = await first_tick_everywhere(publish, stream, group)
    with fanout_gateway(unreachable=frozenset({victim}), close_fails=True) as gateway:
        # WHEN 29 more ticks are published
        event_ids += publish_ticks(publish, stream, 2)

        # THEN the group moves on instead of dead-lettering, and the client, which gets no answer on a
        # connection the server let go of, reconnects and resumes: everyone holds every seq once, in order
        await wait_until_complete(group)
    for subscriber in group:
        assert_every_seq_once_in_order(subscriber, event_ids)
    assert gateway.close_failures >= 1
    assert dead_letters(local_stack) == 0
    assert [resumed(s) >= 1 for s in group] == [isinstance(s, ClientSubscriber) for s in group]


# ---------------------------------------------------------------- (c) a fan-out function that dies mid-batch


@pytest.mark.parametrize("posts_before_death", [1, 0], ids=["after-the-first-post", "after-sequencing-before-posts"])
async def test_a_fan_out_that_dies_mid_batch_loses_nothing(
    local_stack: LocalStack,
    subscribers: tuple[str, list[Subscriber]],
    publish: Publish,
    fanout_spy: FanOutSpy,
    posts_before_death: int,
) -> None:
    # GIVEN three subscribers of one stream, and a fan-out that will die once in the middle of a batch: its
    # records already have their seqs, and one raw subscriber may already have the batch
    stream, group = subscribers
    raw = {s.client_id: s for s in group if isinstance(s, RawSubscriber)}
    with fanout_gateway(die_after=posts_before_death, first_to=frozenset(raw)) as gateway:
        # WHEN 30 ticks are published
        event_ids = publish_ticks(publish, stream)

        # THEN every subscriber ends up with every seq once, in order
        await wait_until_complete(group)
    for subscriber in group:
        assert_every_seq_once_in_order(subscriber, event_ids)
    # ... and the death was real: one invocation raised and its whole batch came back
    assert gateway.died
    assert fanout_spy.deaths == 1
    assert fanout_spy.redelivered
    # ... and whoever got the batch before the death got it again (as duplicates, dropped by seq)
    assert len(gateway.posted_before_death) == posts_before_death
    for connection_id in gateway.posted_before_death:
        victim = raw[connection_id]
        assert len(victim.arrivals) > len(dedup(victim.arrivals)), victim.name


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
        await eventually(lambda: 4 in late.seqs(), timeout=DELIVERED, what="the fourth tick at the client")
        assert [seq for seq, _ in dedup(late.arrivals)] == [1, 2, 3, 4]
        assert [event_id for _, event_id in dedup(late.arrivals)] == event_ids
    finally:
        await late.stop()
        await witness.stop()
