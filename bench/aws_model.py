"""A discrete-event model of one stack on AWS that runs the project's real fan-out code.

`python -m bench.aws_model` simulates, on simulated time, EventBridge -> SQS ->
the fan-out Lambda -> DynamoDB and the Management API, and the delivery queue ->
the delivery Lambda for large audiences. What runs inside each simulated Lambda
invocation is the real `EventFanOut.process_events` / `EventFanOut.process_chunks` with the
real `DynamoStore` (its sequencing transaction, its audience Query, its retries):
only the ports are simulated -

* the DynamoDB client handed to `DynamoStore` (`SimDynamoDB`): GetItem, Query and
  TransactWriteItems with latencies, per-partition throughput (a stream head is one
  hot item) and the conditions `sequence_event` relies on;
* the `ConnectionGateway` (`SimGateway`): `post_many` with the real client's shape -
  `post_concurrency` requests in flight, the account's token bucket (429 beyond it),
  the real `full_jitter_backoff` between attempts, `max_post_attempts`, and the CPU
  each post costs the function's one event loop;
* the `QueueSender` (`SimSender`): SendMessageBatch to the delivery queue, 10 a call,
  under the queue's send quota.

Around them: `SimQueue` (FIFO groups with one batch in flight per group, or a standard
queue with the event source mapping's scale-up rate, visibility timeouts and
redelivery of failed records), `LambdaFunction` (warm instances, cold starts,
concurrency) and EventBridge (PutEvents, rule delivery to the queue).

Processes are threads run one at a time by the scheduler (`Sim`): a simulated call
blocks its thread until the clock reaches its end, so several invocations interleave
in time order on shared quotas. Sources of every figure are in bench/README.md.

Coarse-graining (said again in the README): audiences are generated per stream and
disjoint; every post is simulated, but a scenario simulates a bounded number of
events (`--max-deliveries` per scenario), so inputs whose offered load is far above
capacity are measured on their first events, and the sustained rate is measured
apart, from a saturating run.
"""

from __future__ import annotations

import argparse
import functools
import heapq
import json
import logging
import math
import os
import random
import statistics
import sys
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from botocore.exceptions import ClientError  # noqa: E402

from bench.cost import PRICES  # noqa: E402
from local.fakes import CountingMetrics  # noqa: E402
from quanttrade_ws import topology  # noqa: E402
from quanttrade_ws.config import Settings  # noqa: E402
from quanttrade_ws.connection_gateway import DeliveryReport, Post  # noqa: E402
from quanttrade_ws.fanout import EventFanOut  # noqa: E402
from quanttrade_ws.management_api.retry import full_jitter_backoff  # noqa: E402
from quanttrade_ws.queues import OutgoingMessage  # noqa: E402
from quanttrade_ws.store.dynamo_store import DynamoStore  # noqa: E402
from quanttrade_ws.store.tables import Backoff  # noqa: E402

EPOCH = 1_800_000_000.0  # wall clock of simulated time 0 (tokens never expire in the model)
Z99 = 2.326  # standard normal quantile of 0.99


# ------------------------------------------------------------------ the scheduler


class Sim:
    """Simulated time: a heap of callbacks, and processes (threads) of which exactly one runs at a time."""

    def __init__(self, seed: int = 1) -> None:
        self.now = 0.0
        self.rng = random.Random(seed)
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._order = 0
        self._baton = threading.Semaphore(0)
        self._current: _Process | None = None
        self.error: BaseException | None = None

    def at(self, when: float, callback: Callable[[], None]) -> None:
        heapq.heappush(self._heap, (max(when, self.now), self._order, callback))
        self._order += 1

    def spawn(self, body: Callable[[], object], when: float | None = None) -> None:
        process = _Process(self, body)
        self.at(self.now if when is None else when, process.resume)

    def sleep(self, seconds: float) -> None:
        """Block the calling process for `seconds` of simulated time."""
        process = self._current
        if process is None:
            raise RuntimeError("Sim.sleep outside a simulated process")
        self.at(self.now + max(0.0, seconds), process.resume)
        process.suspend()

    def run(self, until: float = math.inf) -> None:
        while self._heap and self._heap[0][0] <= until:
            when, _, callback = heapq.heappop(self._heap)
            self.now = when
            callback()
            if self.error is not None:
                raise RuntimeError("a simulated process failed") from self.error


class _Process:
    def __init__(self, sim: Sim, body: Callable[[], object]) -> None:
        self.sim = sim
        self.body = body
        self.go = threading.Semaphore(0)
        self.started = False

    def resume(self) -> None:
        self.sim._current = self
        if not self.started:
            self.started = True
            threading.Thread(target=self._main, daemon=True).start()
        else:
            self.go.release()
        self.sim._baton.acquire()  # until the process blocks again or ends
        self.sim._current = None

    def suspend(self) -> None:
        self.sim._baton.release()
        self.go.acquire()

    def _main(self) -> None:
        try:
            self.body()
        except BaseException as error:  # handed to the scheduler, which raises it
            self.sim.error = error
        finally:
            self.sim._baton.release()


# ------------------------------------------------------------------ parameters


@dataclass(frozen=True)
class Latency:
    """A log-normal latency given by its median and 99th percentile, in seconds."""

    p50: float
    p99: float

    @property
    def sigma(self) -> float:
        return math.log(self.p99 / self.p50) / Z99 if self.p99 > self.p50 > 0 else 0.0

    def sample(self, rng: random.Random) -> float:
        sigma = self.sigma
        return self.p50 * math.exp(sigma * rng.gauss(0.0, 1.0)) if sigma else self.p50


def ms(p50: float, p99: float) -> Latency:
    return Latency(p50 / 1000, p99 / 1000)


@dataclass(frozen=True)
class Profile:
    """Latencies and quotas of one environment (AWS, or the local stack). Sources: bench/README.md."""

    name: str
    put_events: Latency  # the publisher's PutEvents call
    eventbridge_delivery: Latency  # rule match to the message being in the queue
    pipe_hop: Latency  # EventBridge Pipes: ingest queue to the FIFO queue (symbol groups only)
    sqs_send: Latency
    sqs_receive: Latency  # event source mapping: message available -> batch in hand
    sqs_delete: Latency
    invoke: Latency  # event source mapping -> handler running (warm)
    cold_start: Latency  # init of a new execution environment (runtime + handler import)
    dynamodb_get: Latency
    dynamodb_transact: Latency
    dynamodb_query: Latency  # one page, plus query_seconds_per_item for each item returned
    query_seconds_per_item: float
    post: Latency  # a Management API POST from the function, answered
    throttled_post: Latency  # a 429 answer
    post_cpu_seconds: float  # CPU of the function's event loop per post attempt
    event_cpu_seconds: float  # CPU per record outside posting (parse, render, audience)
    management_rate: float  # calls per second per account and region
    management_burst: float  # token bucket depth
    fifo_send_tps: float  # SendMessage(Batch) calls per second per FIFO queue (not high throughput)
    fifo_ht_send_tps_per_group: float  # high-throughput FIFO: per message group (one partition)
    partition_wcu: float
    partition_rcu: float
    account_concurrency: int
    standard_initial_batches: int
    standard_scale_per_minute: int
    standard_max_batches: int
    kinesis_poll_interval: float  # a shard's idle poll interval (standard iterator)
    lambda_ms_billing: bool = True


AWS = Profile(
    name="aws",
    put_events=ms(15, 60),
    eventbridge_delivery=ms(60, 250),
    pipe_hop=ms(40, 150),
    sqs_send=ms(8, 30),
    sqs_receive=ms(15, 60),
    sqs_delete=ms(8, 30),
    invoke=ms(5, 20),
    cold_start=ms(350, 900),
    dynamodb_get=ms(4, 12),
    dynamodb_transact=ms(10, 30),
    dynamodb_query=ms(5, 15),
    query_seconds_per_item=0.000004,  # ~1 MB page (about 8,000 rows of this table) in ~30 ms
    post=ms(25, 80),
    throttled_post=ms(5, 20),
    post_cpu_seconds=0.000064,  # 36.9 us measured on the x86 bench machine, / 0.58 vCPU of 1 GB
    event_cpu_seconds=0.0005,
    management_rate=10_000.0,
    management_burst=5_000.0,
    fifo_send_tps=300.0,
    fifo_ht_send_tps_per_group=300.0,
    partition_wcu=1000.0,
    partition_rcu=3000.0,
    account_concurrency=1000,
    standard_initial_batches=5,
    standard_scale_per_minute=300,
    standard_max_batches=1000,
    kinesis_poll_interval=1.0,
)

# The local stack, from its own measurements (bench/results.json, bench/front-door-results.json):
# every DynamoDB call goes through the SigV4/IAM front door to moto (8.1 ms p50, 12.0 ms p95);
# moto answers the 1,000-row audience Query in 230 ms; the events pump's lag is 3.1 ms; the
# stack's interpreter spends 0.188 CPU seconds per 1,000 deliveries (poster and gateway in one
# process), which bounds its posting rate; a post is answered in 64 / 9,766 s at 64 in flight.
LOCAL = replace(
    AWS,
    name="local",
    put_events=ms(8.1, 12.0),
    eventbridge_delivery=ms(8.1, 12.0),
    sqs_send=ms(8.1, 12.0),
    sqs_receive=ms(3.1, 5.0),
    sqs_delete=ms(8.1, 12.0),
    invoke=ms(1.0, 2.0),
    cold_start=ms(0.0, 0.0),
    dynamodb_get=ms(8.1, 12.0),
    dynamodb_transact=ms(8.1, 12.0),
    dynamodb_query=ms(8.1, 12.0),
    query_seconds_per_item=0.000230,
    post=ms(6.6, 10.0),
    throttled_post=ms(6.6, 10.0),
    post_cpu_seconds=0.000188,
    event_cpu_seconds=0.0,
    management_rate=1e9,  # the end-to-end bench lifts the emulated quota
    management_burst=1e9,
)


@dataclass(frozen=True)
class Design:
    """How market data reaches the fan-out: the queue, its groups and what feeds it."""

    name: str
    queue: str  # "fifo" | "standard" | "kinesis"
    group_by: str  # "source" | "stream"
    high_throughput: bool = False
    via_pipe: bool = False  # EventBridge -> ingest queue -> Pipe -> FIFO (a dynamic MessageGroupId)
    kinesis_shards: int = 1
    kinesis_parallelization: int = 10
    max_concurrency: int | None = None


# A design name with this suffix runs with 429s retried until THROTTLE_DEADLINE into a post_many call
# instead of six attempts a post (the policy ManagementApiGateway takes on), the delivery functions capped
# as the stack declares (topology.DELIVERY.max_concurrency). Without it, six attempts a post, with the cap
# that policy needs (SIX_ATTEMPTS_DELIVERY_CAP: more delivery functions only fail throttled posts).
VARIANT = "+429_until_deadline"
THROTTLE_DEADLINE = 25.0  # under the 30 s timeout of the fan-out and delivery functions
SIX_ATTEMPTS_DELIVERY_CAP = 5

DESIGNS: dict[str, Design] = {
    "source_group": Design("source_group", "fifo", "source"),
    "symbol_group": Design("symbol_group", "fifo", "stream", high_throughput=True, via_pipe=True),
    "standard": Design("standard", "standard", "stream"),
    "kinesis": Design("kinesis", "kinesis", "stream", kinesis_shards=2, kinesis_parallelization=10),
}


# ------------------------------------------------------------------ shared quotas


class TokenBucket:
    """A token bucket as a generic cell rate algorithm: `try_take` refuses beyond the bucket."""

    def __init__(self, rate: float, burst: float) -> None:
        self.interval = 1.0 / rate
        self.tolerance = max(0.0, burst - 1) * self.interval
        self.tat = 0.0
        self.taken = 0
        self.refused = 0

    def try_take(self, now: float) -> bool:
        tat = max(self.tat, now)
        if tat - now > self.tolerance:
            self.refused += 1
            return False
        self.tat = tat + self.interval
        self.taken += 1
        return True

    def wait(self, now: float, units: float = 1.0) -> float:
        """Queueing form: how long a request of `units` waits for its tokens (and takes them)."""
        tat = max(self.tat, now)
        delay = max(0.0, tat - now - self.tolerance)
        self.tat = tat + units * self.interval
        self.taken += 1
        return delay


@dataclass
class Tally:
    """What one run used and paid for, and where it waited."""

    posts: int = 0
    first_post: float = math.inf
    last_post: float = 0.0
    post_attempts: int = 0
    throttled: int = 0
    failed_posts: int = 0
    deliveries: int = 0  # messages that reached a client (a batch post carries several)
    lambda_seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    invocations: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    cold_starts: int = 0
    peak_concurrency: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    sqs_requests: int = 0
    eventbridge_events: int = 0
    pipe_requests: int = 0
    read_units: float = 0.0
    write_units: float = 0.0
    partition_wait: float = 0.0
    send_wait: float = 0.0
    transaction_conflicts: int = 0
    redelivered_records: int = 0
    group_busy: dict[str, float] = field(default_factory=lambda: defaultdict(float))


# ------------------------------------------------------------------ DynamoDB


class _TransactionCanceled(ClientError):
    pass


class _Exceptions:
    ClientError = ClientError
    TransactionCanceledException = _TransactionCanceled
    ConditionalCheckFailedException = type("ConditionalCheckFailedException", (ClientError,), {})


class SimDynamoDB:
    """The low-level DynamoDB client `DynamoStore` is given: what the fan-out calls, on simulated time."""

    exceptions = _Exceptions
    meta = None

    def __init__(self, sim: Sim, profile: Profile, tally: Tally, audience_of: Callable[[str], int]) -> None:
        self.sim = sim
        self.profile = profile
        self.tally = tally
        self.items: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._audience_of = audience_of
        self._partitions: dict[tuple[str, str, str], TokenBucket] = {}

    def _partition(self, table: str, key: str, kind: str) -> TokenBucket:
        bucket = self._partitions.get((table, key, kind))
        if bucket is None:
            rate = self.profile.partition_wcu if kind == "w" else self.profile.partition_rcu
            bucket = self._partitions[(table, key, kind)] = TokenBucket(rate, rate)  # one second of burst
        return bucket

    def _call(self, latency: Latency, waits: Sequence[tuple[str, str, str, float]]) -> None:
        delay = 0.0
        for table, key, kind, units in waits:
            delay = max(delay, self._partition(table, key, kind).wait(self.sim.now, units))
            if kind == "w":
                self.tally.write_units += units
            else:
                self.tally.read_units += units
        self.tally.partition_wait += delay
        self.sim.sleep(delay + latency.sample(self.sim.rng))

    @staticmethod
    def _key(key: dict[str, Any]) -> tuple[str, str]:
        values = [next(iter(v.values())) for v in key.values()]
        return str(values[0]), str(values[1]) if len(values) > 1 else ""

    def get_item(self, TableName: str, Key: dict[str, Any], **_: Any) -> dict[str, Any]:
        pk, sk = self._key(Key)
        self._call(self.profile.dynamodb_get, [(TableName, pk, "r", 1.0)])
        item = self.items.get((TableName, pk, sk))
        return {"Item": dict(item)} if item is not None else {}

    def batch_get_item(self, RequestItems: dict[str, Any], **_: Any) -> dict[str, Any]:
        """Consistent reads of a few keys in one call (a batch's event markers and stream heads): GetItem's
        latency, one read unit on each key's partition."""
        ((table, request),) = RequestItems.items()
        keys = [self._key(key) for key in request["Keys"]]
        self._call(self.profile.dynamodb_get, [(table, pk, "r", 1.0) for pk, _ in keys])
        found = [dict(self.items[(table, *key)]) for key in keys if (table, *key) in self.items]
        return {"Responses": {table: found}, "UnprocessedKeys": {}}

    def query(self, TableName: str, ExpressionAttributeValues: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        key = str(next(iter(ExpressionAttributeValues.values()))["S"])
        if kwargs.get("IndexName"):
            raise NotImplementedError(f"the model serves only the fan-out's Queries, not {TableName} {kwargs}")
        # Audiences are subscriptions; data rooms have no members in these scenarios.
        count = self._audience_of(key) if TableName.endswith("subscriptions") else 0
        units = max(0.5, count * 120 / 4096)  # strongly consistent reads of ~120-byte rows
        latency = self.profile.dynamodb_query
        self._call(
            Latency(
                latency.p50 + count * self.profile.query_seconds_per_item,
                latency.p99 + count * self.profile.query_seconds_per_item,
            ),
            [(TableName, key, "r", units)],
        )
        return {"Items": [_subscription_row(key, index) for index in range(count)]}

    def transact_write_items(self, TransactItems: list[dict[str, Any]]) -> dict[str, Any]:
        waits = []
        for action in TransactItems:
            ((kind, body),) = action.items()
            pk, _ = self._key(body.get("Key") or _key_of(body["Item"]))
            waits.append((body["TableName"], pk, "w", 2.0))  # transactional writes cost two units per KB
        self._call(self.profile.dynamodb_transact, waits)
        # Conditions are checked when the transaction lands, after other processes ran meanwhile.
        reasons = [{"Code": "None"} for _ in TransactItems]
        failed = False
        for index, action in enumerate(TransactItems):
            ((kind, body),) = action.items()
            key = self._key(body.get("Key") or _key_of(body["Item"]))
            current = self.items.get((body["TableName"], *key))
            if "ConditionExpression" in body and not _condition_holds(
                body["ConditionExpression"], current, body.get("ExpressionAttributeValues", {})
            ):
                reasons[index] = {"Code": "ConditionalCheckFailed"}
                failed = True
        if failed:
            self.tally.transaction_conflicts += 1
            response: Any = {"Error": {"Code": "TransactionCanceledException"}, "CancellationReasons": reasons}
            raise _TransactionCanceled(
                response,
                "TransactWriteItems",
            )
        for action in TransactItems:
            ((kind, body),) = action.items()
            if kind == "Put":
                key = self._key(_key_of(body["Item"]))
                self.items[(body["TableName"], *key)] = dict(body["Item"])
            elif kind == "Update":
                key = self._key(body["Key"])
                item = self.items.setdefault((body["TableName"], *key), dict(body["Key"]))
                item.update(_set_expression(body["UpdateExpression"], body["ExpressionAttributeValues"]))
            else:
                raise NotImplementedError(f"transaction action {kind} is not modelled")
        return {}


def _key_of(item: dict[str, Any]) -> dict[str, Any]:
    """The key attributes of a Streams table item (the only table the fan-out writes)."""
    return {"stream": item["stream"], "seq": item["seq"]}


def _condition_holds(expression: str, item: dict[str, Any] | None, values: dict[str, Any]) -> bool:
    """`attribute_not_exists(a)`, optionally `OR a = :v`: the shapes the store's sequencing writes."""
    left, _, right = expression.partition(" OR ")
    attribute = left.strip().removeprefix("attribute_not_exists(").removesuffix(")")
    name, _, placeholder = right.partition(" = ")
    if not left.startswith("attribute_not_exists(") or (right and name.strip() != attribute):
        raise NotImplementedError(f"condition {expression!r} is not modelled")
    if item is None or attribute not in item:
        return True
    return bool(right) and item[attribute] == values[placeholder.strip()]


def _set_expression(expression: str, values: dict[str, Any]) -> dict[str, Any]:
    if not expression.startswith("SET "):
        raise NotImplementedError(f"update {expression!r} is not modelled")
    out = {}
    for assignment in expression[4:].split(","):
        name, _, placeholder = assignment.partition("=")
        out[name.strip()] = values[placeholder.strip()]
    return out


def _subscription_row(stream_key: str, index: int) -> dict[str, Any]:
    return {"connection_id": {"S": f"{stream_key}#{index}"}, "user_id": {"S": f"u{index}"}}


# ------------------------------------------------------------------ the Management API


@dataclass
class EventRecord:
    event_id: str
    symbol: str
    published_at: float
    audience: int
    delivered: int = 0
    last_delivery: float = 0.0


class Deliveries:
    """Which event each delivered frame carries, and when it arrived."""

    def __init__(self, tally: Tally, keep_latencies: bool) -> None:
        self.events: dict[str, EventRecord] = {}
        self.tally = tally
        self._frames: dict[bytes, tuple[str, ...]] = {}
        self.latencies: list[float] | None = [] if keep_latencies else None

    def event_ids(self, data: bytes) -> tuple[str, ...]:
        ids = self._frames.get(data)
        if ids is None:
            message = json.loads(data)
            messages = message["payload"]["messages"] if message.get("message_type") == "batch" else [message]
            ids = tuple(str(m["payload"]["event_id"]) for m in messages)
            self._frames[data] = ids
        return ids

    def delivered(self, data: bytes, at: float) -> None:
        ids = self._frames.get(data) or self.event_ids(data)
        self.tally.deliveries += len(ids)
        for event_id in ids:
            record = self.events[event_id]
            record.delivered += 1
            record.last_delivery = max(record.last_delivery, at)
            if self.latencies is not None:
                self.latencies.append(at - record.published_at)


class ManagementApi:
    """The account-wide side of the Management API: its token bucket."""

    def __init__(self, profile: Profile) -> None:
        self.bucket = TokenBucket(profile.management_rate, profile.management_burst)


class SimGateway:
    """`ConnectionGateway.post_many` as `ManagementApiGateway` does it, against the simulated API.

    Requests go out on `concurrency` connections of one event loop (each attempt costs
    that loop `post_cpu_seconds`); a refused token is a 429 answered quickly, retried
    after the real client's full-jitter backoff, and a post still refused after
    `max_attempts` is reported failed. The function advances in slices of
    `SLICE_SECONDS`, so concurrent invocations take tokens nearly in time order.
    """

    SLICE_SECONDS = 0.02

    def __init__(
        self, sim: Sim, profile: Profile, api: ManagementApi, deliveries: Deliveries, settings: Settings
    ) -> None:
        self.sim = sim
        self.profile = profile
        self.api = api
        self.deliveries = deliveries
        self.concurrency = settings.post_concurrency
        self.max_attempts = settings.max_post_attempts
        # None: a post is given up after max_attempts, throttled or not (ManagementApiGateway today).
        # A number: 429s are retried until this many seconds into the call, failing only other errors
        # at max_attempts (a policy the model measures; see bench/README.md).
        self.throttle_deadline: float | None = None
        self.tally = deliveries.tally

    def post_many(self, posts: Sequence[Post], deadline: float | None = None) -> DeliveryReport:
        report = DeliveryReport()
        if not posts:
            return report
        sim, profile, rng, bucket = self.sim, self.profile, self.sim.rng, self.api.bucket
        start = sim.now
        lanes = [start] * min(self.concurrency, len(posts))
        heapq.heapify(lanes)
        ready: deque[tuple[int, int]] = deque((index, 1) for index in range(len(posts)))
        waiting: list[tuple[float, int, int]] = []  # (ready at, post, attempt) after a backoff
        loop_free = start
        outstanding = len(posts)
        finished_at = start
        post_p50, post_sigma = profile.post.p50, profile.post.sigma
        throttled_p50, throttled_sigma = profile.throttled_post.p50, profile.throttled_post.sigma
        cpu = profile.post_cpu_seconds
        gauss, exp, take = rng.gauss, math.exp, bucket.try_take
        delivered = self.deliveries.delivered
        tally = self.tally
        while outstanding:
            horizon = sim.now + self.SLICE_SECONDS
            while lanes and lanes[0] < horizon:
                lane_at = heapq.heappop(lanes)
                while waiting and waiting[0][0] <= lane_at:
                    _, index, attempt = heapq.heappop(waiting)
                    ready.append((index, attempt))
                if not ready:
                    if not waiting:
                        break  # nothing left for this lane: it stays idle
                    heapq.heappush(lanes, max(lane_at, waiting[0][0]))
                    continue
                index, attempt = ready.popleft()
                sent_at = loop_free = (loop_free if loop_free > lane_at else lane_at) + cpu
                tally.post_attempts += 1
                if sent_at < tally.first_post:
                    tally.first_post = sent_at
                if sent_at > tally.last_post:
                    tally.last_post = sent_at
                if take(sent_at):
                    done = sent_at + post_p50 * exp(post_sigma * gauss(0.0, 1.0))
                    tally.posts += 1
                    delivered(posts[index].data, done)
                    report.delivered.append(posts[index])
                    outstanding -= 1
                    if done > finished_at:
                        finished_at = done
                else:
                    done = sent_at + throttled_p50 * exp(throttled_sigma * gauss(0.0, 1.0))
                    tally.throttled += 1
                    deadline = self.throttle_deadline
                    if (attempt >= self.max_attempts) if deadline is None else (done - start >= deadline):
                        tally.failed_posts += 1
                        report.failed.append(posts[index])
                        outstanding -= 1
                        finished_at = max(finished_at, done)
                    else:
                        report.throttle_retries += 1
                        delay = full_jitter_backoff(attempt, 0.025, 1.0, rng.random)
                        heapq.heappush(waiting, (done + delay, index, attempt + 1))
                heapq.heappush(lanes, done)
            if outstanding:
                sim.sleep(self.SLICE_SECONDS)
        sim.sleep(max(0.0, finished_at - sim.now))
        return report

    def post(self, connection_id: str, data: bytes) -> bool:
        report = self.post_many([Post(connection_id, data)])
        return bool(report.delivered)

    def close(self, connection_id: str) -> None:
        self.sim.sleep(self.profile.post.sample(self.sim.rng))

    def info(self, connection_id: str) -> dict[str, object] | None:
        return {}


# ------------------------------------------------------------------ SQS, Kinesis and Lambda


@dataclass
class Message:
    body: str
    group: str
    message_id: str
    receive_count: int = 0
    visible_at: float = 0.0


class LambdaFunction:
    """Warm execution environments, cold starts, concurrency and billed duration of one function."""

    def __init__(self, sim: Sim, profile: Profile, tally: Tally, name: str, memory_gb: float) -> None:
        self.sim = sim
        self.profile = profile
        self.tally = tally
        self.name = name
        self.memory_gb = memory_gb
        self.idle = 0
        self.running = 0
        self.fanout: EventFanOut | None = None

    def invoke(self, handler: Callable[[list[dict[str, Any]]], dict[str, Any]], records: list[dict[str, Any]]) -> dict:
        sim, profile = self.sim, self.profile
        self.running += 1
        self.tally.peak_concurrency[self.name] = max(self.tally.peak_concurrency[self.name], self.running)
        self.tally.invocations[self.name] += 1
        began = sim.now
        sim.sleep(profile.invoke.sample(sim.rng))
        if self.idle:
            self.idle -= 1
        else:
            self.tally.cold_starts += 1
            sim.sleep(profile.cold_start.sample(sim.rng))
        sim.sleep(profile.event_cpu_seconds * len(records))
        try:
            return handler(records)
        finally:
            self.tally.lambda_seconds[self.name] += (sim.now - began) * self.memory_gb
            self.running -= 1
            self.idle += 1


class SimQueue:
    """An SQS queue and its Lambda event source mapping.

    FIFO: one batch in flight per message group; a batch takes the oldest available
    group's messages first and fills up from other available groups, in order
    (SQS's receive, as Lambda's poller sees it). Standard: any message, with the
    mapping's pollers growing from `standard_initial_batches` by
    `standard_scale_per_minute`. Kinesis (`shards` x `parallelization` ordered lanes by
    partition key): like FIFO with a fixed number of groups and an idle poll interval.
    Failed records come back after the visibility timeout.
    """

    def __init__(
        self,
        sim: Sim,
        profile: Profile,
        tally: Tally,
        name: str,
        kind: str,
        function: LambdaFunction,
        handler: Callable[[list[dict[str, Any]]], dict[str, Any]],
        batch_size: int,
        visibility_timeout: float,
        max_concurrency: int | None = None,
    ) -> None:
        self.sim = sim
        self.profile = profile
        self.tally = tally
        self.name = name
        self.kind = kind
        self.function = function
        self.handler = handler
        self.batch_size = batch_size
        self.visibility_timeout = visibility_timeout
        self.max_concurrency = max_concurrency or profile.account_concurrency
        self.groups: dict[str, deque[Message]] = defaultdict(deque)
        self.order: deque[str] = deque()  # groups with visible messages, oldest first
        self.in_flight: set[str] = set()
        self.batches_in_flight = 0
        self.backlog = 0
        self._ids = 0
        self._poll_pending = False
        self._first_active: float | None = None
        self.peak_backlog = 0

    def enqueue(self, body: str, group: str) -> None:
        self._ids += 1
        message = Message(body, group, f"{self.name}-{self._ids}")
        self._make_visible(message)

    def _make_visible(self, message: Message) -> None:
        queue = self.groups[message.group]
        if not queue and message.group not in self.in_flight:
            self.order.append(message.group)
        queue.append(message)
        self.backlog += 1
        self.peak_backlog = max(self.peak_backlog, self.backlog)
        self._schedule_poll()

    def _requeue_front(self, group: str, messages: list[Message]) -> None:
        """Failed records come back at the head of their group after the visibility timeout."""
        queue = self.groups[group]
        for message in reversed(messages):
            queue.appendleft(message)
        self.backlog += len(messages)
        self.in_flight.discard(group)
        if group not in self.order:
            self.order.appendleft(group)
        self._schedule_poll()

    def _concurrency_limit(self) -> int:
        if self.kind != "standard":
            return self.max_concurrency
        if self._first_active is None:
            self._first_active = self.sim.now
        minutes = (self.sim.now - self._first_active) / 60
        grown = self.profile.standard_initial_batches + int(self.profile.standard_scale_per_minute * minutes)
        return min(self.max_concurrency, self.profile.standard_max_batches, grown)

    def _schedule_poll(self) -> None:
        if self._poll_pending:
            return
        self._poll_pending = True
        delay = self.profile.sqs_receive.sample(self.sim.rng)
        if self.kind == "kinesis" and self.batches_in_flight == 0:
            delay += self.sim.rng.uniform(0, self.profile.kinesis_poll_interval)
        self.sim.at(self.sim.now + delay, self._poll)

    def _poll(self) -> None:
        self._poll_pending = False
        while self.order and self.batches_in_flight < self._concurrency_limit():
            batch = self._take_batch()
            if not batch:
                break
            self.batches_in_flight += 1
            self.tally.sqs_requests += 1  # the receive
            self.sim.spawn(functools.partial(self._run, batch))

    def _take_batch(self) -> list[Message]:
        batch: list[Message] = []
        skipped: list[str] = []
        while self.order and len(batch) < self.batch_size:
            group = self.order.popleft()
            queue = self.groups[group]
            if self.kind != "standard" and group in self.in_flight:
                skipped.append(group)
                continue
            while queue and len(batch) < self.batch_size:
                batch.append(queue.popleft())
            if self.kind != "standard":
                self.in_flight.add(group)
            if queue and self.kind == "standard":
                self.order.appendleft(group)
        self.order.extendleft(reversed(skipped))
        self.backlog -= len(batch)
        return batch

    def _run(self, batch: list[Message]) -> None:
        sim = self.sim
        began = sim.now
        for message in batch:
            message.receive_count += 1
        records = [
            {
                "messageId": m.message_id,
                "body": m.body,
                "attributes": {"MessageGroupId": m.group, "ApproximateReceiveCount": str(m.receive_count)},
            }
            for m in batch
        ]
        response = self.function.invoke(self.handler, records)
        failed = {item["itemIdentifier"] for item in response.get("batchItemFailures", [])}
        sim.sleep(self.profile.sqs_delete.sample(sim.rng))
        self.tally.sqs_requests += 1  # the delete
        groups = {m.group for m in batch}
        for group in groups:
            self.tally.group_busy[f"{self.name}:{group}"] += sim.now - began
        retry: dict[str, list[Message]] = defaultdict(list)
        for message in batch:
            if message.message_id in failed and message.receive_count < topology.EVENTS_QUEUE.max_receive_count:
                retry[message.group].append(message)
        self.tally.redelivered_records += sum(len(v) for v in retry.values())
        self.batches_in_flight -= 1
        for group in groups - set(retry):
            self.in_flight.discard(group)
            if self.groups[group] and group not in self.order:
                self.order.append(group)
        for group, messages in retry.items():
            sim.at(began + self.visibility_timeout, functools.partial(self._requeue_front, group, messages))
        if self.order:
            self._schedule_poll()


class SimSender:
    """`QueueSender.send` to the delivery queue: SendMessageBatch calls of 10, under the queue's quota."""

    def __init__(self, sim: Sim, profile: Profile, tally: Tally, queues: dict[str, SimQueue]) -> None:
        self.sim = sim
        self.profile = profile
        self.tally = tally
        self.queues = queues
        self.bucket = TokenBucket(profile.fifo_send_tps, profile.fifo_send_tps)

    def send(self, queue_url: str, messages: list[OutgoingMessage]) -> list[OutgoingMessage]:
        queue = self.queues[queue_url]
        for start in range(0, len(messages), 10):
            chunk = messages[start : start + 10]
            wait = self.bucket.wait(self.sim.now)
            self.tally.send_wait += wait
            self.sim.sleep(wait + self.profile.sqs_send.sample(self.sim.rng))
            self.tally.sqs_requests += 1
            for message in chunk:
                queue.enqueue(message.body, message.group_id)
        return []


# ------------------------------------------------------------------ one scenario


@dataclass(frozen=True)
class Scenario:
    audience: int
    rate: float  # events per second offered
    symbols: int
    events: int  # how many events are published
    design: str = "source_group"
    profile: str = "aws"
    seed: int = 7
    keep_latencies: bool = False
    # The delivery queue mapping's MaximumConcurrency, as the stack declares it (None: uncapped).
    delivery_concurrency: int | None = topology.DELIVERY.max_concurrency
    throttle_deadline: float | None = None  # SimGateway.throttle_deadline
    # Execution environments initialised before the first event (provisioned concurrency), per function.
    warm_fanout: int = 0
    warm_delivery: int = 0


@dataclass
class Outcome:
    scenario: Scenario
    tally: Tally
    events: list[EventRecord]
    latencies: list[float] | None
    simulated_seconds: float
    wall_seconds: float
    events_queue_peak_backlog: int
    delivery_queue_peak_backlog: int

    def complete(self) -> list[EventRecord]:
        return [e for e in self.events if e.delivered >= e.audience]

    def times_to_last(self) -> list[float]:
        return sorted(e.last_delivery - e.published_at for e in self.complete())


def run_scenario(scenario: Scenario, horizon: float = 3600.0) -> Outcome:
    """Publish `scenario.events` events at `scenario.rate` and run until every one is delivered (or `horizon`)."""
    wall = time.perf_counter()
    profile = AWS if scenario.profile == "aws" else LOCAL
    design = DESIGNS[scenario.design.removesuffix(VARIANT)]
    sim = Sim(scenario.seed)
    tally = Tally()
    deliveries = Deliveries(tally, scenario.keep_latencies)
    audiences = {f"market_data:S{index}": scenario.audience for index in range(scenario.symbols)}
    settings = Settings(
        delivery_queue_url="delivery.fifo",
        events_dlq_url="events-dlq.fifo",
        jwt_secret="the-model-signs-no-token-but-settings-need-a-key",
        session_secret="the-model-resumes-no-session-but-settings-need-one",
    )
    dynamodb = SimDynamoDB(sim, profile, tally, lambda key: audiences.get(key, 0))
    api = ManagementApi(profile)
    gateway = SimGateway(sim, profile, api, deliveries, settings)
    gateway.throttle_deadline = scenario.throttle_deadline
    queues: dict[str, SimQueue] = {}
    sender = SimSender(sim, profile, tally, queues)

    def store_for() -> DynamoStore:
        return DynamoStore(settings, client=dynamodb, clock=lambda: EPOCH + sim.now, backoff=Backoff(sleep=sim.sleep))

    def fanout_of(function: LambdaFunction) -> EventFanOut:
        # One EventFanOut per function, as one warm module state: its audience cache is shared by the
        # function's environments here, which at most makes Query counts optimistic for hot streams.
        if function.fanout is None:
            function.fanout = EventFanOut(
                settings,
                store_for(),
                gateway,
                sender,
                remove_connection=lambda _cid: None,
                metrics=CountingMetrics(),
                clock=lambda: EPOCH + sim.now,
                monotonic=lambda: sim.now,
            )
        return function.fanout

    fanout_fn = LambdaFunction(sim, profile, tally, "fanout", topology.FANOUT.memory_mb / 1024)
    delivery_fn = LambdaFunction(sim, profile, tally, "delivery", topology.DELIVERY.memory_mb / 1024)
    fanout_fn.idle, delivery_fn.idle = scenario.warm_fanout, scenario.warm_delivery
    events_kind = design.queue
    events_queue = SimQueue(
        sim,
        profile,
        tally,
        "events",
        events_kind,
        fanout_fn,
        lambda records: fanout_of(fanout_fn).process_events(records),
        topology.FANOUT.batch_size,
        topology.EVENTS_QUEUE.visibility_timeout_seconds,
        max_concurrency=(design.kinesis_shards * design.kinesis_parallelization)
        if design.queue == "kinesis"
        else design.max_concurrency,
    )
    delivery_queue = SimQueue(
        sim,
        profile,
        tally,
        "delivery",
        "fifo",
        delivery_fn,
        lambda records: fanout_of(delivery_fn).process_chunks(records),
        topology.DELIVERY.batch_size,
        topology.DELIVERY_QUEUE.visibility_timeout_seconds,
        max_concurrency=scenario.delivery_concurrency,
    )
    queues[settings.delivery_queue_url] = delivery_queue
    queues[settings.events_dlq_url] = SimQueue(
        sim, profile, tally, "dlq", "standard", delivery_fn, lambda r: {}, 10, 60, max_concurrency=0
    )
    ingest = TokenBucket(profile.fifo_send_tps, profile.fifo_send_tps)
    group_ingest: dict[str, TokenBucket] = {}
    kinesis_lanes = design.kinesis_shards * design.kinesis_parallelization

    def group_of(symbol: str) -> str:
        if design.group_by == "source":
            return topology.SOURCES[0].message_group
        if design.queue == "kinesis":
            return f"lane{hash_symbol(symbol) % kinesis_lanes}"
        return f"market_data:{symbol}"

    def publish(index: int) -> None:
        symbol = f"S{sim.rng.randrange(scenario.symbols)}" if scenario.symbols > 1 else "S0"
        event_id = f"evt-{index}"
        deliveries.events[event_id] = EventRecord(event_id, symbol, sim.now, scenario.audience)
        body = json.dumps(_market_data_event(event_id, symbol, EPOCH + sim.now))
        tally.eventbridge_events += 1
        delay = profile.put_events.sample(sim.rng) + profile.eventbridge_delivery.sample(sim.rng)
        group = group_of(symbol)
        if design.via_pipe:
            delay += profile.pipe_hop.sample(sim.rng)
            tally.pipe_requests += 1
            tally.sqs_requests += 2  # the ingest queue's send and the pipe's receive/delete
        if design.queue == "fifo":
            # EventBridge sends one SendMessage per event: a FIFO queue's send quota is per call.
            if design.high_throughput:
                bucket = group_ingest.get(group)
                if bucket is None:
                    bucket = group_ingest[group] = TokenBucket(
                        profile.fifo_ht_send_tps_per_group, profile.fifo_ht_send_tps_per_group
                    )
            else:
                bucket = ingest
            wait = bucket.wait(sim.now + delay)
            tally.send_wait += wait
            delay += wait
        tally.sqs_requests += 1
        sim.at(sim.now + delay, lambda: events_queue.enqueue(body, group))

    for index in range(scenario.events):
        sim.at(index / scenario.rate, functools.partial(publish, index))
    sim.run(until=horizon)
    events = list(deliveries.events.values())
    return Outcome(
        scenario,
        tally,
        events,
        deliveries.latencies,
        sim.now,
        time.perf_counter() - wall,
        events_queue.peak_backlog,
        delivery_queue.peak_backlog,
    )


def hash_symbol(symbol: str) -> int:
    import zlib

    return zlib.crc32(symbol.encode())


def _market_data_event(event_id: str, symbol: str, now: float) -> dict[str, Any]:
    stamp = datetime.fromtimestamp(now, UTC).isoformat().replace("+00:00", "Z")
    return {
        "version": "0",
        "id": event_id,
        "detail-type": "MarketData",
        "source": "quanttrade.market-data",
        "account": "123456789012",
        "time": stamp,
        "region": "us-east-1",
        "resources": [],
        "detail": {"symbol": symbol, "price": 101.25, "volume": 1200, "timestamp": stamp},
    }


# ------------------------------------------------------------------ figures


def percentile(values: Sequence[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


def cost_per_million(outcome: Outcome) -> float | None:
    """Dollars per million deliveries, at bench/cost.py's list prices."""
    tally = outcome.tally
    if not tally.deliveries:
        return None
    dollars = (
        tally.posts * PRICES["apigw_message"]
        + sum(tally.lambda_seconds.values()) * PRICES["lambda_gb_second_arm64"]
        + sum(tally.invocations.values()) * PRICES["lambda_request"]
        + tally.sqs_requests * PRICES["sqs_fifo_request"]
        + tally.eventbridge_events * PRICES["eventbridge_event"]
        + tally.pipe_requests * 0.40 / 1e6
        + tally.read_units * PRICES["dynamodb_read_unit"]
        + tally.write_units * PRICES["dynamodb_write_unit"]
    )
    return dollars / tally.deliveries * 1e6


def saturation(outcome: Outcome, profile: Profile) -> dict[str, float]:
    """Utilisation of each limited resource while events were being delivered (1.0 = at its limit)."""
    tally = outcome.tally
    active = max((e.last_delivery for e in outcome.events), default=0.0) or outcome.simulated_seconds
    active = max(active, 1e-9)
    posting = max(tally.last_post - tally.first_post, 1e-9)
    return {
        # Tokens granted while posts were going out, over what the account's bucket gives in that time.
        "management_api_quota": tally.posts / posting / profile.management_rate if tally.posts > 1 else 0.0,
        "fifo_message_group": max(tally.group_busy.values(), default=0.0) / active,
        "sqs_send_quota": tally.send_wait / active,
        "dynamodb_partition": tally.partition_wait / active,
        "lambda_concurrency": max(tally.peak_concurrency.values(), default=0) / profile.account_concurrency,
    }


def first_limit(outcome: Outcome, usage: dict[str, float]) -> str:
    """The resource that gives out first: posts failing under throttling say it louder than utilisation."""
    if outcome.tally.failed_posts:
        return "management_api_quota (throttled posts failed, chunks redelivered)"
    name = max(usage, key=lambda key: usage[key])
    return name if usage[name] >= 0.5 else "none (below half of every limit)"


def summarise(outcome: Outcome, sustained: float | None = None) -> dict[str, Any]:
    profile = AWS if outcome.scenario.profile == "aws" else LOCAL
    times = outcome.times_to_last()
    usage = saturation(outcome, profile)
    return {
        "audience": outcome.scenario.audience,
        "events_per_second": outcome.scenario.rate,
        "symbols": outcome.scenario.symbols,
        "design": outcome.scenario.design,
        "events_simulated": outcome.scenario.events,
        "events_complete": len(times),
        "time_to_last_delivery_p50_s": _round(percentile(times, 0.5)),
        "time_to_last_delivery_p99_s": _round(percentile(times, 0.99)),
        "sustained_events_per_second": _round(sustained),
        "backlog_grows": sustained is not None and sustained < outcome.scenario.rate,
        "peak_lambda_concurrency": dict(outcome.tally.peak_concurrency),
        "cost_per_million_deliveries": _round(cost_per_million(outcome), 4),
        "saturates_first": first_limit(outcome, usage),
        "utilisation": {name: _round(value, 3) for name, value in usage.items()},
        "posts": outcome.tally.posts,
        "deliveries": outcome.tally.deliveries,
        "throttled_attempts": outcome.tally.throttled,
        "failed_posts": outcome.tally.failed_posts,
        "redelivered_records": outcome.tally.redelivered_records,
        "transaction_conflicts": outcome.tally.transaction_conflicts,
        "cold_starts": outcome.tally.cold_starts,
        "simulated_seconds": _round(outcome.simulated_seconds),
        "wall_seconds": _round(outcome.wall_seconds),
    }


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def make_scenario(audience: int, rate: float, symbols: int, events: int, design: str) -> Scenario:
    """A scenario of the grid; a design with VARIANT retries 429s to the deadline, delivery capped as shipped."""
    if design.endswith(VARIANT):
        return Scenario(audience, rate, symbols, events, design, throttle_deadline=THROTTLE_DEADLINE)
    return Scenario(audience, rate, symbols, events, design, delivery_concurrency=SIX_ATTEMPTS_DELIVERY_CAP)


def sustained_rate(audience: int, symbols: int, design: str, max_deliveries: int) -> float:
    """Events per second the design keeps up with: complete events / time, under a saturating offer."""
    events = max(3, min(400, max_deliveries // audience))
    # Offered at three times what the account's Management API quota could carry: enough to build a
    # backlog everywhere, without simulating a retry storm that tells nothing more.
    offered = min(5000.0, 3 * AWS.management_rate / audience)
    outcome = run_scenario(make_scenario(audience, offered, symbols, events, design))
    complete = outcome.complete()
    if not complete:
        return 0.0
    # Completed events over the whole run, from the first publish: the pipeline's fill time counts
    # against it, so it is a lower bound (a few percent for 3 events of 100,000 subscribers).
    return len(complete) / max(e.last_delivery for e in complete)


def events_for(audience: int, rate: float, max_deliveries: int, seconds: float) -> int:
    return int(max(2, min(rate * seconds, max_deliveries // audience)))


# ------------------------------------------------------------------ validation against the local stack


def validate(results_path: str) -> dict[str, Any]:
    """The local profile against bench/results.json's end_to_end_1000_* figures."""
    measured = json.load(open(results_path))  # noqa: SIM115
    outcome = run_scenario(
        Scenario(1000, 0.5, 1, 20, design="source_group", profile="local", keep_latencies=True), horizon=600
    )
    latencies = outcome.latencies or []
    times = outcome.times_to_last()
    model = {
        "latency_p50_ms": round(1000 * (percentile(latencies, 0.5) or 0), 1),
        "latency_p99_ms": round(1000 * (percentile(latencies, 0.99) or 0), 1),
        "deliveries_per_second": round(1000 / statistics.median(times), 1) if times else None,
    }
    comparison: dict[str, Any] = {}
    for name, value in model.items():
        local = measured.get(f"end_to_end_1000_{name}")
        comparison[name] = {
            "local": local,
            "model": value,
            "error_percent": round(100 * (value - local) / local, 1) if local and value else None,
        }
    comparison["within_25_percent"] = all(
        abs(entry["error_percent"]) <= 25 for entry in comparison.values() if isinstance(entry, dict)
    )
    return comparison


# ------------------------------------------------------------------ the grid


AUDIENCES = (1_000, 10_000, 100_000)
RATES = (1.0, 10.0, 100.0, 1000.0)
SYMBOLS = (1, 50, 500)


def grid(designs: Sequence[str], max_deliveries: int, seconds: float, log: Callable[[str], None]) -> list[dict]:
    rows = []
    for design in designs:
        for audience in AUDIENCES:
            for symbols in SYMBOLS:
                sustained = sustained_rate(audience, symbols, design, max_deliveries)
                for rate in RATES:
                    scenario = make_scenario(
                        audience, rate, symbols, events_for(audience, rate, max_deliveries, seconds), design
                    )
                    row = summarise(run_scenario(scenario), sustained)
                    rows.append(row)
                    log(
                        f"{design:13} audience {audience:>7,} {rate:>6g}/s over {symbols:>3} symbols: "
                        f"last delivery p50 {row['time_to_last_delivery_p50_s']} s p99 "
                        f"{row['time_to_last_delivery_p99_s']} s, sustained {row['sustained_events_per_second']}/s, "
                        f"${row['cost_per_million_deliveries']}/M, first: {row['saturates_first']} "
                        f"({row['wall_seconds']} s)"
                    )
    return rows


def throughput(design: str, symbols: int, offered: float = 1500.0, events: int = 3000) -> dict[str, Any]:
    """Market-data events per second a design keeps up with when each event has one subscriber.

    One subscriber keeps the Management API far from its quota, so what is measured is
    the pipeline: queue quotas, message groups, concurrency, the stream heads.
    """
    outcome = run_scenario(Scenario(1, offered, symbols, events, design))
    finish = sorted(e.last_delivery for e in outcome.complete())
    half = len(finish) // 2
    rate = (
        (len(finish) - half) / (finish[-1] - finish[half - 1]) if half >= 1 and finish[-1] > finish[half - 1] else 0.0
    )
    times = outcome.times_to_last()
    return {
        "offered_events_per_second": offered,
        "complete_events": len(finish),
        "events_per_second": _round(min(rate, offered)),
        "time_to_last_delivery_p50_s": _round(percentile(times, 0.5)),
        "time_to_last_delivery_p99_s": _round(percentile(times, 0.99)),
        "peak_lambda_concurrency": dict(outcome.tally.peak_concurrency),
        "transaction_conflicts": outcome.tally.transaction_conflicts,
        "redelivered_records": outcome.tally.redelivered_records,
        "queue_send_wait_s": _round(outcome.tally.send_wait),
    }


def design_comparison(designs: Sequence[str]) -> dict[str, Any]:
    """Each ordering design on 500 symbols and on one hot symbol, 1,500 events/s offered."""
    return {design: {"500_symbols": throughput(design, 500), "1_symbol": throughput(design, 1)} for design in designs}


# The design the stack ships: one group per symbol through the pipe, 429s retried to the deadline.
SHIPPED = "symbol_group" + VARIANT


def goals() -> dict[str, Any]:
    """The issue's goals, each as scenarios of the model at default quotas, for the design the stack ships.

    Each reach goal is measured twice: from cold (the first event after idle pays the fan-out's and the
    delivery functions' cold starts) and with those environments initialised beforehand, as provisioned
    concurrency or steady traffic keeps them (1 fan-out, `topology.DELIVERY.max_concurrency` delivery).
    """
    warm = {"warm_fanout": 1, "warm_delivery": topology.DELIVERY.max_concurrency or 0}

    def times(audience: int, rate: float, events: int, **options: Any) -> list[float]:
        return run_scenario(replace(make_scenario(audience, rate, 1, events, SHIPPED), **options)).times_to_last()

    reach_10k, reach_10k_warm = times(10_000, 0.2, 10), times(10_000, 0.2, 10, **warm)
    reach_100k, reach_100k_warm = times(100_000, 0.05, 1), times(100_000, 0.05, 1, **warm)
    cost = run_scenario(make_scenario(1000, 5.0, 50, 40, SHIPPED))
    return {
        "design": SHIPPED,
        "delivery_max_concurrency": topology.DELIVERY.max_concurrency,
        "reach_10k_p50_s": _round(percentile(reach_10k, 0.5)),
        "reach_10k_p99_s": _round(percentile(reach_10k, 0.99)),
        "reach_10k_s_each_event": [_round(t, 2) for t in reach_10k],
        "reach_10k_warm_p50_s": _round(percentile(reach_10k_warm, 0.5)),
        "reach_10k_warm_p99_s": _round(percentile(reach_10k_warm, 0.99)),
        "reach_100k_s": _round(max(reach_100k, default=None)),
        "reach_100k_warm_s": _round(max(reach_100k_warm, default=None)),
        "reach_100k_quota_bound_s": 100_000 / AWS.management_rate,
        "cost_audience_1000_per_million": _round(cost_per_million(cost), 4),
    }


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The grid as one markdown table: the design before (one group per source) beside the shipped one, per input."""
    by_input: dict[tuple, dict[str, dict[str, Any]]] = defaultdict(dict)
    for row in rows:
        by_input[(row["audience"], row["events_per_second"], row["symbols"])][row["design"]] = row

    def seconds(row: dict[str, Any] | None) -> str:
        if row is None or row["time_to_last_delivery_p50_s"] is None:
            return "-"
        return f"{row['time_to_last_delivery_p50_s']:g} / {row['time_to_last_delivery_p99_s']:g}"

    def sustained(row: dict[str, Any] | None) -> str:
        return "-" if row is None else f"{row['sustained_events_per_second']:g}"

    lines = [
        "| audience | events/s | symbols | last delivery p50 / p99 s: before | shipped "
        "| sustained events/s: before / shipped | peak Lambda concurrency | $ per million deliveries "
        "| saturates first (last three: shipped) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for (audience, rate, symbols), designs in sorted(by_input.items()):
        before, shipped = designs.get("source_group"), designs.get(SHIPPED)
        shown = shipped or before
        assert shown is not None
        concurrency = sum(shown["peak_lambda_concurrency"].values())
        lines.append(
            f"| {audience:,} | {rate:g} | {symbols} | {seconds(before)} | {seconds(shipped)} "
            f"| {sustained(before)} / {sustained(shipped)} | {concurrency} "
            f"| {shown['cost_per_million_deliveries']} | {shown['saturates_first']} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.aws_model", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--designs",
        nargs="+",
        default=["source_group", SHIPPED],
        choices=sorted([*DESIGNS, *(name + VARIANT for name in DESIGNS)]),
    )
    parser.add_argument("--max-deliveries", type=int, default=50_000, help="deliveries simulated per scenario")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds of offered load per scenario")
    parser.add_argument("--output", default=os.path.join(ROOT, "bench", "aws-model-results.json"))
    parser.add_argument("--results", default=os.path.join(ROOT, "bench", "results.json"))
    parser.add_argument("--skip-grid", action="store_true")
    parser.add_argument("--table", action="store_true", help="print the grid of --output as markdown, run nothing")
    args = parser.parse_args(argv)
    if args.table:
        with open(args.output) as handle:
            print(markdown_table(json.load(handle)["grid"]))
        return {}
    started = time.perf_counter()
    # Sequencing contention and failed posts are counted in the figures; their log lines are noise here.
    logging.getLogger("quanttrade_ws").setLevel(logging.CRITICAL)

    def log(line: str) -> None:
        print(line, flush=True)

    figures: dict[str, Any] = {"command": "python -m bench.aws_model " + " ".join(argv or sys.argv[1:])}
    figures["validation_local_end_to_end_1000"] = validate(args.results)
    log(f"validation: {json.dumps(figures['validation_local_end_to_end_1000'])}")
    figures["goals"] = goals()
    log(f"goals: {json.dumps(figures['goals'])}")
    figures["design_comparison"] = design_comparison(sorted(DESIGNS))
    log(f"designs: {json.dumps(figures['design_comparison'])}")
    if not args.skip_grid:
        figures["grid"] = grid(args.designs, args.max_deliveries, args.seconds, log)
    figures["profile_aws"] = asdict(AWS)
    figures["profile_local"] = asdict(LOCAL)
    figures["designs"] = {name: asdict(design) for name, design in DESIGNS.items()}
    figures["wall_seconds"] = round(time.perf_counter() - started, 1)
    with open(args.output, "w") as handle:
        json.dump(figures, handle, indent=1)
        handle.write("\n")
    log(f"wrote {args.output} in {figures['wall_seconds']} s")
    return figures


if __name__ == "__main__":
    main()
