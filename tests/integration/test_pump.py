"""The SQS pump against moto in server mode: Lambda's event source mapping semantics, end to end over HTTP."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from local.lambda_runtime.function import LambdaFunction
from local.moto_server import MotoServer
from local.pump import QueuePump

VISIBILITY_SECONDS = 1
MAX_RECEIVES = 5


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    server = MotoServer(port=0).start()
    yield server
    server.stop()


@pytest.fixture
def sqs(moto: MotoServer) -> Any:
    return moto.client("sqs")


class Queue:
    def __init__(self, sqs: Any, fifo: bool = True) -> None:
        suffix = ".fifo" if fifo else ""
        fifo_attributes = {"FifoQueue": "true"} if fifo else {}
        name = f"pump-{uuid.uuid4().hex[:12]}"
        self.sqs = sqs
        self.fifo = fifo
        self.dlq_url = sqs.create_queue(QueueName=f"{name}-dlq{suffix}", Attributes=fifo_attributes)["QueueUrl"]
        dlq_arn = self.attribute(self.dlq_url, "QueueArn")
        self.url = sqs.create_queue(
            QueueName=f"{name}{suffix}",
            Attributes={
                **fifo_attributes,
                **({"ContentBasedDeduplication": "true"} if fifo else {}),
                "VisibilityTimeout": str(VISIBILITY_SECONDS),
                "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": MAX_RECEIVES}),
            },
        )["QueueUrl"]
        self.arn = self.attribute(self.url, "QueueArn")

    def attribute(self, url: str, name: str) -> str:
        return str(self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[name])["Attributes"][name])

    def send(self, body: str, group: str = "g") -> str:
        extra = {"MessageGroupId": group} if self.fifo else {}
        return str(self.sqs.send_message(QueueUrl=self.url, MessageBody=body, **extra)["MessageId"])

    def counts(self, url: str | None = None) -> tuple[int, int]:
        """(visible, in flight) messages of the queue (or its DLQ)."""
        attributes = self.sqs.get_queue_attributes(
            QueueUrl=url or self.url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return int(attributes["ApproximateNumberOfMessages"]), int(attributes["ApproximateNumberOfMessagesNotVisible"])

    def drain(self, url: str) -> list[dict[str, Any]]:
        response = self.sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0, MessageSystemAttributeNames=["All"]
        )
        return list(response.get("Messages", []))


class Recorder:
    """A handler that records every batch it gets and answers with `decide(records)`."""

    def __init__(self, decide: Callable[[list[dict[str, Any]]], Any] = lambda records: None) -> None:
        self.batches: list[list[dict[str, Any]]] = []
        self.decide = decide
        self._lock = threading.Lock()

    def __call__(self, event: dict[str, Any], context: Any) -> Any:
        with self._lock:
            self.batches.append(event["Records"])
        return self.decide(event["Records"])

    @property
    def bodies(self) -> list[str]:
        return [record["body"] for batch in self.batches for record in batch]


async def eventually(condition: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


def pump_for(queue: Queue, handler: Any, moto: MotoServer, *, concurrency: int = 1, **options: Any) -> QueuePump:
    function = LambdaFunction(
        "test-consumer", handler, timeout_seconds=options.pop("timeout", 5.0), concurrency=concurrency
    )
    return QueuePump(function, lambda: moto.client("sqs"), queue.url, queue.arn, fifo=queue.fifo, **options)


def fail_bodies(*bodies: str) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
    return lambda records: {
        "batchItemFailures": [{"itemIdentifier": r["messageId"]} for r in records if r["body"] in bodies]
    }


async def test_records_have_the_shape_lambda_gives_them(sqs: Any, moto: MotoServer) -> None:
    # GIVEN a FIFO queue with one message
    queue = Queue(sqs)
    message_id = queue.send('{"hello": 1}', group="market-data")
    recorder = Recorder()
    pump = pump_for(queue, recorder, moto)

    # WHEN the pump runs
    pump.start()
    try:
        await eventually(lambda: bool(recorder.batches), what="a batch")
    finally:
        await pump.stop()

    # THEN the handler got Lambda's SQS event record, field for field
    (record,) = recorder.batches[0]
    assert list(record) == [
        "messageId",
        "receiptHandle",
        "body",
        "attributes",
        "messageAttributes",
        "md5OfBody",
        "eventSource",
        "eventSourceARN",
        "awsRegion",
    ]
    assert record["messageId"] == message_id
    assert record["body"] == '{"hello": 1}'
    assert record["eventSource"] == "aws:sqs"
    assert record["eventSourceARN"] == queue.arn
    assert record["awsRegion"] == "us-east-1"
    assert record["messageAttributes"] == {}
    attributes = record["attributes"]
    assert attributes["ApproximateReceiveCount"] == "1"
    assert attributes["MessageGroupId"] == "market-data"
    assert set(attributes) >= {
        "ApproximateReceiveCount",
        "SentTimestamp",
        "SenderId",
        "ApproximateFirstReceiveTimestamp",
        "MessageGroupId",
        "MessageDeduplicationId",
        "SequenceNumber",
    }
    assert len(attributes["SequenceNumber"]) == 20 and attributes["SequenceNumber"].isdigit()
    assert all(isinstance(value, str) for value in attributes.values())


async def test_message_attributes_are_spelled_as_lambda_spells_them(sqs: Any, moto: MotoServer) -> None:
    queue = Queue(sqs, fifo=False)
    sqs.send_message(
        QueueUrl=queue.url,
        MessageBody="x",
        MessageAttributes={"kind": {"DataType": "String", "StringValue": "tick"}},
    )
    recorder = Recorder()
    pump = pump_for(queue, recorder, moto)
    pump.start()
    try:
        await eventually(lambda: bool(recorder.batches), what="a batch")
    finally:
        await pump.stop()
    (record,) = recorder.batches[0]
    assert record["messageAttributes"] == {
        "kind": {"stringValue": "tick", "stringListValues": [], "binaryListValues": [], "dataType": "String"}
    }
    assert "md5OfMessageAttributes" in record
    assert "SequenceNumber" not in record["attributes"]  # standard queues have none


async def test_partial_batch_failure_leaves_exactly_the_failed_message(sqs: Any, moto: MotoServer) -> None:
    # GIVEN three messages in three groups, and a handler that reports the second one as failed
    queue = Queue(sqs)
    for body, group in (("a", "g1"), ("b", "g2"), ("c", "g3")):
        queue.send(body, group)
    recorder = Recorder(fail_bodies("b"))
    pump = pump_for(queue, recorder, moto)

    # WHEN one batch has been processed
    pump.start()
    try:
        await eventually(lambda: pump.stats.deleted == 2, what="the successful records to be deleted")
        # THEN the others are deleted and only the failed one is left, in flight until its visibility timeout
        assert sorted(recorder.bodies) == ["a", "b", "c"]
        assert queue.counts() == (0, 1)
        # AND once that has passed, the pump gets it again, received a second time. (Checked while the pump
        # runs: a long poll the stop leaves behind may still receive it, as a disabled mapping's last poll can.)
        await eventually(lambda: recorder.bodies.count("b") == 2, timeout=5, what="the failed message again")
    finally:
        await pump.stop()
    (again,) = recorder.batches[-1]
    assert again["body"] == "b"
    assert again["attributes"]["ApproximateReceiveCount"] == "2"
    assert recorder.bodies.count("a") == recorder.bodies.count("c") == 1


async def test_a_message_failing_every_time_goes_to_the_dlq_after_max_receives(sqs: Any, moto: MotoServer) -> None:
    # GIVEN a poison message next to a good one, and a handler that always fails the poison
    queue = Queue(sqs)
    queue.send("poison", "p")
    queue.send("good", "ok")
    recorder = Recorder(fail_bodies("poison"))
    pump = pump_for(queue, recorder, moto)

    # WHEN the pump keeps receiving it
    pump.start()
    try:
        await eventually(lambda: queue.counts(queue.dlq_url)[0] == 1, timeout=20, what="the poison in the DLQ")
    finally:
        await pump.stop()

    # THEN it was received exactly maxReceiveCount times, then moved to the DLQ by the queue itself
    receive_counts = [
        int(r["attributes"]["ApproximateReceiveCount"]) for b in recorder.batches for r in b if r["body"] == "poison"
    ]
    assert receive_counts == [1, 2, 3, 4, 5]
    assert recorder.bodies.count("good") == 1
    assert queue.counts() == (0, 0)
    (dead,) = queue.drain(queue.dlq_url)
    assert dead["Body"] == "poison"


async def test_a_raising_handler_deletes_nothing(sqs: Any, moto: MotoServer) -> None:
    # GIVEN a handler that raises
    queue = Queue(sqs)
    for index in range(3):
        queue.send(f"m{index}", f"g{index}")

    def explode(records: list[dict[str, Any]]) -> None:
        raise RuntimeError("boom")

    recorder = Recorder(explode)
    pump = pump_for(queue, recorder, moto)

    # WHEN it gets the batch
    pump.start()
    try:
        await eventually(lambda: pump.stats.failed_batches == 1, what="the failed invocation")
    finally:
        await pump.stop()

    # THEN the whole batch stays: nothing deleted, all of it back after the visibility timeout
    assert pump.stats.deleted == 0
    assert sorted(recorder.bodies) == ["m0", "m1", "m2"]
    assert sum(queue.counts()) == 3
    await eventually(lambda: queue.counts() == (3, 0), timeout=5, what="the batch to become visible again")


async def test_a_handler_timeout_fails_the_whole_batch(sqs: Any, moto: MotoServer) -> None:
    queue = Queue(sqs)
    queue.send("slow", "g")

    def too_slow(records: list[dict[str, Any]]) -> None:
        time.sleep(0.6)

    pump = pump_for(queue, Recorder(too_slow), moto, timeout=0.2)
    pump.start()
    try:
        await eventually(lambda: pump.stats.failed_batches == 1, what="the timed out invocation")
    finally:
        await pump.stop()
    assert pump.stats.deleted == 0
    assert "Timed out" in (pump.stats.last_error or "") or "timed out" in (pump.stats.last_error or "")
    assert sum(queue.counts()) == 1


async def test_an_unknown_item_identifier_fails_the_whole_batch(sqs: Any, moto: MotoServer) -> None:
    queue = Queue(sqs)
    queue.send("a", "g1")
    queue.send("b", "g2")
    pump = pump_for(queue, Recorder(lambda records: {"batchItemFailures": [{"itemIdentifier": "nope"}]}), moto)
    pump.start()
    try:
        await eventually(lambda: pump.stats.failed_batches >= 1, what="the unreadable response")
    finally:
        await pump.stop()
    assert pump.stats.deleted == 0
    assert sum(queue.counts()) == 2


async def test_fifo_order_is_kept_within_each_group(sqs: Any, moto: MotoServer) -> None:
    # GIVEN two interleaved groups of 25 messages each
    queue = Queue(sqs)
    expected: dict[str, list[str]] = {"g": [], "h": []}
    for index in range(25):
        for group in ("g", "h"):
            body = f"{group}-{index:02d}"
            expected[group].append(body)
            queue.send(body, group)
    recorder = Recorder()
    pump = pump_for(queue, recorder, moto)

    # WHEN the pump drains the queue
    pump.start()
    try:
        await eventually(lambda: len(recorder.bodies) == 50, what="every message")
    finally:
        await pump.stop()

    # THEN each group arrived in the order it was sent, in batches no bigger than the batch size, each once
    for group, bodies in expected.items():
        assert [b for b in recorder.bodies if b.startswith(group)] == bodies
    assert all(1 <= len(batch) <= 10 for batch in recorder.batches)
    assert queue.counts() == (0, 0)


async def test_a_failed_record_holds_back_its_group_until_it_is_retried(sqs: Any, moto: MotoServer) -> None:
    # GIVEN a handler that fails "g-0" once (and so, like fanout, everything after it in the group)
    queue = Queue(sqs)
    for index in range(3):
        queue.send(f"g-{index}", "g")
    failed_once: set[str] = set()

    def decide(records: list[dict[str, Any]]) -> dict[str, Any]:
        failures: list[dict[str, str]] = []
        for record in records:
            if record["body"] == "g-0" and "g-0" not in failed_once:
                failed_once.add("g-0")
                failures.append({"itemIdentifier": record["messageId"]})
            elif failures:
                failures.append({"itemIdentifier": record["messageId"]})
        return {"batchItemFailures": failures}

    recorder = Recorder(decide)
    pump = pump_for(queue, recorder, moto)
    pump.start()
    try:
        await eventually(lambda: pump.stats.deleted == 3, timeout=10, what="the retried group")
    finally:
        await pump.stop()

    # THEN the group was delivered again, in order, after the visibility timeout
    assert recorder.bodies[-3:] == ["g-0", "g-1", "g-2"]


@pytest.mark.parametrize("pollers", [1, 5])
async def test_stop_finishes_promptly_when_idle(sqs: Any, moto: MotoServer, pollers: int) -> None:
    # GIVEN a pump whose pollers are all in a long poll of an empty queue
    queue = Queue(sqs)
    pump = pump_for(queue, Recorder(), moto, concurrency=pollers)
    pump.start()
    assert await pump.wait_idle(timeout=5)
    # WHEN it stops THEN it does not wait for the polls to run out
    started = time.monotonic()
    await pump.stop()
    assert time.monotonic() - started < 2.5
    assert not pump.running
    assert pump.pollers == pollers


# ---------------------------------------------------------------------- several pollers


class Rendezvous:
    """The first `parties` invocations wait for each other, so they only get through if they run at once."""

    def __init__(self, parties: int, timeout: float = 4.0) -> None:
        self._barrier = threading.Barrier(parties, timeout=timeout)
        self._parties = parties
        self._arrived = 0
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            self._arrived += 1
            mine = self._arrived
        if mine <= self._parties:
            self._barrier.wait()  # raises BrokenBarrierError (failing the batch) if no other comes meanwhile


@pytest.mark.parametrize(
    ("maximum_concurrency", "function_concurrency", "pollers"),
    [(None, 8, 5), (None, 3, 3), (2, 8, 2), (8, 8, 8), (20, 8, 8)],
)
def test_pollers_are_the_mappings_maximum_concurrency_or_five_within_the_functions_concurrency(
    maximum_concurrency: int | None, function_concurrency: int, pollers: int
) -> None:
    # GIVEN a function with some concurrency WHEN a mapping with (or without) MaximumConcurrency pumps for it
    function = LambdaFunction("f", lambda event, context: None, concurrency=function_concurrency)
    pump = QueuePump(function, lambda: None, "q.fifo", "arn:q", maximum_concurrency=maximum_concurrency)
    # THEN it runs as many pollers as Lambda would invoke at once, and says so in its stats
    assert pump.pollers == pollers
    assert pump.stats.as_dict()["pollers"] == pollers


@pytest.mark.parametrize("maximum_concurrency", [0, 1, 1001])
def test_a_maximum_concurrency_lambda_refuses_is_refused(maximum_concurrency: int) -> None:
    function = LambdaFunction("f", lambda event, context: None)
    with pytest.raises(ValueError, match="MaximumConcurrency is 2 to 1000"):
        QueuePump(function, lambda: None, "q.fifo", "arn:q", maximum_concurrency=maximum_concurrency)


async def test_several_pollers_keep_each_groups_order_through_partial_failures(sqs: Any, moto: MotoServer) -> None:
    # GIVEN 6 interleaved groups of 12 messages, and a handler that (like the fan-out) fails every record
    # whose index is 2 or 7 on its first delivery, and every later record of that group in the batch; the
    # first two invocations only get through if they run at the same time
    queue = Queue(sqs)
    groups, per_group = 6, 12
    for index in range(per_group):
        for group in range(groups):
            queue.send(f"{group}-{index}", f"g{group}")
    processed: dict[str, list[int]] = {f"g{group}": [] for group in range(groups)}
    lock = threading.Lock()
    rendezvous = Rendezvous(2)

    def decide(records: list[dict[str, Any]]) -> dict[str, Any]:
        rendezvous()
        failed_groups: set[str] = set()
        failures = []
        for record in records:
            group, index = record["attributes"]["MessageGroupId"], int(record["body"].split("-")[1])
            first_delivery = record["attributes"]["ApproximateReceiveCount"] == "1"
            if group in failed_groups or (index % 5 == 2 and first_delivery):
                failed_groups.add(group)
                failures.append({"itemIdentifier": record["messageId"]})
                continue
            with lock:
                processed[group].append(index)
        time.sleep(0.02)  # the work: other pollers receive meanwhile
        return {"batchItemFailures": failures}

    recorder = Recorder(decide)
    pump = pump_for(queue, recorder, moto, concurrency=4, batch_size=4)

    # WHEN four pollers drain the queue
    pump.start()
    try:
        await eventually(
            lambda: sum(map(len, processed.values())) == groups * per_group, timeout=30, what="every message"
        )
    finally:
        await pump.stop()

    # THEN every group was processed in the order it was sent, each message once, nothing lost
    assert processed == {f"g{group}": list(range(per_group)) for group in range(groups)}
    assert queue.counts() == (0, 0)
    assert queue.counts(queue.dlq_url) == (0, 0)
    # AND the failures were redelivered, batches held several groups, and batches ran at once
    assert pump.stats.failed_records >= groups * 2
    assert any(len({r["attributes"]["MessageGroupId"] for r in batch}) > 1 for batch in recorder.batches)
    stats = pump.stats.as_dict()
    assert stats["pollers"] == 4
    assert stats["peak_in_flight"] >= 2
    assert pump.stats.failed_batches == 0


async def test_several_pollers_drain_a_standard_queue_at_once(sqs: Any, moto: MotoServer) -> None:
    # GIVEN a standard queue with 40 messages, and a handler whose first three invocations must overlap
    queue = Queue(sqs, fifo=False)
    for index in range(40):
        queue.send(f"m{index}")
    rendezvous = Rendezvous(3)

    def decide(records: list[dict[str, Any]]) -> None:
        rendezvous()

    recorder = Recorder(decide)
    pump = pump_for(queue, recorder, moto, concurrency=3, batch_size=5)

    # WHEN the pump runs
    pump.start()
    try:
        await eventually(lambda: pump.stats.deleted == 40, timeout=20, what="every message deleted")
    finally:
        await pump.stop()

    # THEN each message was processed once, by invocations that ran three at a time at first
    assert sorted(recorder.bodies) == sorted(f"m{index}" for index in range(40))
    assert pump.stats.failed_batches == 0
    assert pump.stats.as_dict()["peak_in_flight"] == 3


async def test_stop_finishes_every_batch_in_hand(sqs: Any, moto: MotoServer) -> None:
    # GIVEN two pollers, each in the middle of an invocation that waits to be let go
    queue = Queue(sqs)
    queue.send("a", "g1")
    queue.send("b", "g2")
    let_go = threading.Event()

    def wait_to_be_let_go(records: list[dict[str, Any]]) -> None:
        assert let_go.wait(timeout=10)

    recorder = Recorder(wait_to_be_let_go)
    pump = pump_for(queue, recorder, moto, concurrency=2, batch_size=1)
    pump.start()
    await eventually(lambda: pump.parallelism.in_flight == 2, what="two invocations in flight")

    # WHEN the pump is stopped while they run, and they then finish
    stopping = asyncio.create_task(pump.stop())
    await asyncio.sleep(0)  # the stop has begun: no poller takes another batch
    let_go.set()
    await stopping

    # THEN both batches were completed and deleted before the stop returned
    assert pump.stats.deleted == 2
    assert queue.counts() == (0, 0)
    assert not pump.running
