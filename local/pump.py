"""SQS event source mappings for the local stack: what Lambda's pollers do, against moto.

For every event source mapping of the template, a `QueuePump` runs several
pollers that long-poll its queue at once, each handing its batch to the
function exactly as Lambda's SQS event source mapping would (record shape,
batch size) and honouring the answer:

* a `batchItemFailures` response deletes every other record; the failed ones
  stay in flight and reappear after the visibility timeout;
* a response Lambda cannot read (an item identifier that is empty or not in
  the batch) and a handler that raises or times out fail the whole batch:
  nothing is deleted;
* after `maxReceiveCount` receives the queue moves a message to its DLQ. moto
  does that itself in server mode, on the receive after the last allowed one,
  as SQS does (tests/integration/test_pump.py holds it to that), so the pump
  does not re-implement it.

How many pollers, as Lambda scales
(https://docs.aws.amazon.com/lambda/latest/dg/services-sqs-scaling.html):
Lambda starts an SQS mapping with five concurrent batches and scales out while
messages wait, up to the mapping's `ScalingConfig.MaximumConcurrency` (2 to
1,000,
https://docs.aws.amazon.com/AWSCloudFormation/latest/TemplateReference/aws-properties-lambda-eventsourcemapping-scalingconfig.html)
and the function's concurrency. A pump runs that ceiling from the start:
`MaximumConcurrency` if the mapping sets one, else `DEFAULT_POLLERS` (Lambda's
five), never more than the function's concurrency (the execution environments
the local stack gives it). Each poller receives, invokes and deletes on its own;
stats, the FIFO sequence numbers and the function are shared.

Order on a FIFO queue comes from the queue, not from the pump: Lambda delivers
a group's messages in order, one batch of a group in flight at a time, and a
batch may hold several groups, in order within each; so a FIFO mapping's
concurrency is at most its number of active message groups (same page). That
holds here because a FIFO queue returns no message of a group that has
messages in flight (received, not deleted, visibility not run out) to anyone
(https://repost.aws/knowledge-center/sqs-fifo-messages-not-returned), so a
failed record holds back its group, and only its group, until it is retried.
moto's receive did not do that atomically, busy-looped on a long poll while
groups were in flight, and redelivered a group last message first;
`local.moto_sqs` fixes all three, and tests/integration/test_pump.py holds
several pollers to per-group order through failures.

Latency: moto wakes a long poll as soon as a message can be received (a send,
a delete that frees a group, a visibility change), so a poll returns in ~5 ms
and an idle poller costs one request per `wait_seconds`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from local.background import Parallelism, PollingLoop
from local.lambda_runtime.function import LambdaFunction

logger = logging.getLogger("quanttrade.local.pump")

# Lambda starts an SQS mapping with five concurrent batches; a mapping without MaximumConcurrency gets
# that many pollers (bounded by the function's concurrency).
DEFAULT_POLLERS = 5

# The system attributes Lambda puts in each record, in its order.
RECORD_ATTRIBUTES = (
    "ApproximateReceiveCount",
    "AWSTraceHeader",
    "SentTimestamp",
    "SequenceNumber",
    "MessageGroupId",
    "SenderId",
    "MessageDeduplicationId",
    "ApproximateFirstReceiveTimestamp",
)


@dataclass(frozen=True)
class BatchOutcome:
    """How one batch went, as the function's logs and metrics would tell on AWS."""

    receive_counts: tuple[int, ...]  # each record's ApproximateReceiveCount
    failed_records: int  # records that come back: those in batchItemFailures, or all of them
    error: str | None = None  # the invocation failed (error type: message): the whole batch comes back

    @property
    def redelivered(self) -> bool:
        return max(self.receive_counts, default=1) >= 2


@dataclass
class PumpStats:
    parallelism: Parallelism
    receives: int = 0
    batches: int = 0
    records: int = 0
    deleted: int = 0
    failed_records: int = 0  # reported in batchItemFailures
    failed_batches: int = 0  # handler raised, timed out or answered unreadably
    last_error: str | None = None
    latencies_ms: list[float] = field(default_factory=list)  # SentTimestamp -> handler invoked, last 1000
    outcomes: deque[BatchOutcome] = field(default_factory=lambda: deque(maxlen=1000))  # the last 1000 batches

    def as_dict(self) -> dict[str, Any]:
        recent = sorted(self.latencies_ms)
        return {
            **self.parallelism.as_dict(),  # in_flight: invocations running now
            "receives": self.receives,
            "batches": self.batches,
            "records": self.records,
            "deleted": self.deleted,
            "failed_records": self.failed_records,
            "failed_batches": self.failed_batches,
            "last_error": self.last_error,
            "queue_lag_ms_p50": round(recent[len(recent) // 2], 1) if recent else None,
        }


class QueuePump(PollingLoop):
    """One event source mapping: a queue polled for one function by several pollers at once."""

    def __init__(
        self,
        function: LambdaFunction,
        sqs_factory: Callable[[], Any],
        queue_url: str,
        queue_arn: str,
        *,
        batch_size: int = 10,
        maximum_concurrency: int | None = None,
        fifo: bool | None = None,
        region: str = "us-east-1",
        wait_seconds: int = 1,
        error_backoff: float = 0.5,
    ) -> None:
        if not 1 <= batch_size <= 10:
            raise ValueError("an SQS event source takes 1 to 10 records per batch here (ReceiveMessage's maximum)")
        if maximum_concurrency is not None and not 2 <= maximum_concurrency <= 1000:
            raise ValueError(f"ScalingConfig.MaximumConcurrency is 2 to 1000, not {maximum_concurrency}")
        super().__init__(sqs_factory, pollers=min(maximum_concurrency or DEFAULT_POLLERS, function.concurrency))
        self.function = function
        self.queue_url = queue_url
        self.queue_arn = queue_arn
        self.batch_size = batch_size
        self.fifo = queue_url.endswith(".fifo") if fifo is None else fifo
        self.region = region
        self.wait_seconds = wait_seconds
        self.error_backoff = error_backoff
        self.stats = PumpStats(self.parallelism)
        self._sequence_numbers: OrderedDict[str, str] = OrderedDict()
        self._last_sequence = 0
        self._idle = asyncio.Event()

    # ------------------------------------------------------------------ lifecycle

    @property
    def task_name(self) -> str:
        return f"pump-{self.function.name}"

    async def wait_idle(self, timeout: float) -> bool:
        """Whether a receive came back empty within `timeout` (the queue had nothing receivable)."""
        self._idle.clear()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    # ------------------------------------------------------------------ one poller

    async def _poll(self, poller: int) -> None:
        while not self._stopping.is_set():
            try:
                messages = await self._receive_unless_stopping(poller)
            except Exception as error:
                # moto restarting or unreachable: keep trying, as the Lambda poller does, without spinning.
                self.stats.last_error = f"receive: {type(error).__name__}: {error}"
                logger.warning("%s: ReceiveMessage failed: %s", self.function.name, error)
                await self._pause(self.error_backoff)
                continue
            self.stats.receives += 1
            if not messages:
                self._idle.set()
                continue
            with self.parallelism.batch():
                await self._process(poller, messages)

    async def _receive_unless_stopping(self, poller: int) -> list[dict[str, Any]]:
        """A long poll that a stop does not wait for: nothing received is lost by leaving it, since
        messages a receive never returned stay on the queue, as with Lambda's poller."""
        receive = asyncio.ensure_future(self._blocking(self._receive, poller))
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({receive, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if not receive.done():
            # Stopping mid-poll: a batch the poll still returns becomes visible again after its timeout.
            receive.add_done_callback(lambda future: future.cancelled() or future.exception())
            return []
        return receive.result()

    def _receive(self, poller: int) -> list[dict[str, Any]]:
        response = self.client(poller).receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=self.batch_size,
            WaitTimeSeconds=self.wait_seconds,
            AttributeNames=["All"],
            MessageSystemAttributeNames=["All"],
            MessageAttributeNames=["All"],
        )
        return list(response.get("Messages", []))

    async def _process(self, poller: int, messages: list[dict[str, Any]]) -> None:
        records = [self.record(message) for message in messages]
        self.stats.batches += 1
        self.stats.records += len(records)
        now_ms = time.time() * 1000
        for message in messages:
            sent = message.get("Attributes", {}).get("SentTimestamp")
            if sent:
                self.stats.latencies_ms.append(max(0.0, now_ms - int(sent)))
        del self.stats.latencies_ms[:-1000]
        counts = tuple(int(record["attributes"].get("ApproximateReceiveCount", "1")) for record in records)
        try:
            response = await self.function.invoke({"Records": records})
        except Exception as error:
            # Lambda: an invocation error fails the whole batch; every record comes back after the timeout.
            self.stats.failed_batches += 1
            self.stats.outcomes.append(BatchOutcome(counts, len(records), f"{_error_type(error)}: {error}"))
            self.stats.last_error = f"{self.function.name}: {type(error).__name__}: {error}"
            logger.error(
                "%s failed a batch of %d: %s: %s", self.function.name, len(records), type(error).__name__, error
            )
            return
        failed = self.failed_ids(response, {record["messageId"] for record in records})
        if failed is None:
            self.stats.failed_batches += 1
            self.stats.outcomes.append(BatchOutcome(counts, len(records), "unreadable batchItemFailures"))
            self.stats.last_error = f"{self.function.name}: unreadable batchItemFailures {str(response)[:200]}"
            logger.error("%s answered an unreadable partial batch response: %.200s", self.function.name, response)
            return
        self.stats.outcomes.append(BatchOutcome(counts, len(failed)))
        self.stats.failed_records += len(failed)
        done = [message for message in messages if message["MessageId"] not in failed]
        if done:
            await self._blocking(self._delete, poller, done)

    def _delete(self, poller: int, messages: list[dict[str, Any]]) -> None:
        for start in range(0, len(messages), 10):
            chunk = messages[start : start + 10]
            entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(chunk)]
            try:
                response = self.client(poller).delete_message_batch(QueueUrl=self.queue_url, Entries=entries)
            except Exception as error:
                # Undeleted records come back after the visibility timeout: at-least-once, as on AWS.
                self.stats.last_error = f"delete: {type(error).__name__}: {error}"
                logger.warning("%s: DeleteMessageBatch failed: %s", self.function.name, error)
                continue
            self.stats.deleted += len(response.get("Successful", []))
            for failure in response.get("Failed", []):
                logger.warning("%s: could not delete a message: %s", self.function.name, failure)

    # ------------------------------------------------------------------ Lambda's shapes

    @staticmethod
    def failed_ids(response: Any, batch_ids: set[str]) -> set[str] | None:
        """The records to keep, per Lambda's rules for ReportBatchItemFailures; None fails the whole batch.

        No response, or one without `batchItemFailures` (or with an empty list), means every record succeeded;
        anything else that is not an object cannot be read as a partial response and fails the batch.
        """
        if response is None:
            return set()
        if not isinstance(response, dict):
            return None
        failures = response.get("batchItemFailures")
        if failures is None:
            return set()
        if not isinstance(failures, list):
            return None
        failed: set[str] = set()
        for failure in failures:
            identifier = failure.get("itemIdentifier") if isinstance(failure, dict) else None
            if not isinstance(identifier, str) or identifier not in batch_ids:
                return None
            failed.add(identifier)
        return failed

    def record(self, message: dict[str, Any]) -> dict[str, Any]:
        """One SQS message as a record of Lambda's SQS event."""
        received = message.get("Attributes", {})
        attributes = {name: str(received[name]) for name in RECORD_ATTRIBUTES if name in received}
        if self.fifo and "SequenceNumber" not in attributes:
            attributes["SequenceNumber"] = self._sequence_number(message["MessageId"])
        ordered = {name: attributes[name] for name in RECORD_ATTRIBUTES if name in attributes}
        record: dict[str, Any] = {
            "messageId": message["MessageId"],
            "receiptHandle": message["ReceiptHandle"],
            "body": message["Body"],
            "attributes": ordered,
            "messageAttributes": {
                name: _lambda_message_attribute(value) for name, value in message.get("MessageAttributes", {}).items()
            },
            "md5OfBody": message.get("MD5OfBody") or hashlib.md5(message["Body"].encode()).hexdigest(),
        }
        if message.get("MD5OfMessageAttributes"):
            record["md5OfMessageAttributes"] = message["MD5OfMessageAttributes"]
        record.update({"eventSource": "aws:sqs", "eventSourceARN": self.queue_arn, "awsRegion": self.region})
        return record

    def _sequence_number(self, message_id: str) -> str:
        """SQS gives every FIFO message a 20 digit, increasing SequenceNumber; moto only does when the
        sender set a deduplication id (content-based deduplication gets none), so one is made here,
        increasing in receive order and stable across redeliveries of the same message."""
        known = self._sequence_numbers.get(message_id)
        if known is not None:
            self._sequence_numbers.move_to_end(message_id)
            return known
        self._last_sequence = max(self._last_sequence + 1, 10**19 + time.time_ns() // 1000 * 1000)
        number = str(self._last_sequence)
        self._sequence_numbers[message_id] = number
        if len(self._sequence_numbers) > 10_000:
            self._sequence_numbers.popitem(last=False)
        return number


def _error_type(error: Exception) -> str:
    # Lambda's errorType (Runtime.ExitError, Sandbox.Timedout, ...) when the runtime reported one.
    return str(getattr(error, "error_type", None) or type(error).__name__)


def _lambda_message_attribute(value: dict[str, Any]) -> dict[str, Any]:
    """SQS's MessageAttributeValue as Lambda spells it (camelCase, list fields always present)."""
    attribute: dict[str, Any] = {
        "stringListValues": list(value.get("StringListValues", [])),
        "binaryListValues": list(value.get("BinaryListValues", [])),
        "dataType": value.get("DataType", "String"),
    }
    if "StringValue" in value:
        attribute["stringValue"] = value["StringValue"]
    if "BinaryValue" in value:
        binary = value["BinaryValue"]
        if isinstance(binary, bytes | bytearray):
            import base64

            binary = base64.b64encode(binary).decode()
        attribute["binaryValue"] = binary
    return attribute
