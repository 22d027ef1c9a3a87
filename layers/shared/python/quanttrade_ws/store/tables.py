"""The store's way to DynamoDB: one client, its retries, one backoff, one clock.

Every repository of the store is built on `DynamoTables`, so all of them share
one client (with botocore's retries switched off: the retries here are the only
ones), one jittered backoff and one clock.

DynamoDB's own failures are never read as a limit. A cancelled transaction is
classified by each item's reason: a failed condition on the item that encodes a
limit is that limit; conflicts and throttling are retried with bounded, jittered
backoff (as are throttling and internal errors of plain calls); anything else
raises `StoreError`, which the client sees as INTERNAL.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

from botocore.exceptions import ConnectionError as BotocoreConnectionError
from botocore.exceptions import HTTPClientError

from quanttrade_ws.clock import Clock, wall_clock
from quanttrade_ws.config import Settings
from quanttrade_ws.store.codec import s

# Cancellation reasons that say "try again", not "your condition failed".
RETRYABLE_REASONS = frozenset(
    {"TransactionConflict", "ThrottlingError", "ProvisionedThroughputExceeded", "RequestLimitExceeded"}
)
# Errors of plain calls (and of a whole transaction) that pass with time.
RETRYABLE_ERRORS = frozenset(
    {
        "ThrottlingException",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "InternalServerError",
        "TransactionConflictException",
    }
)
# A request that may not have reached DynamoDB (refused, reset, timed out): botocore retried these
# before the store took retries over.
TRANSPORT_ERRORS = (BotocoreConnectionError, HTTPClientError)
CONDITION_FAILED = "ConditionalCheckFailed"
# DynamoDB's caps: actions in one TransactWriteItems, keys in one BatchGetItem, requests in one BatchWriteItem.
TRANSACTION_ACTIONS = 100
TRANSACTION_BYTES = 4 * 1024 * 1024  # DynamoDB's cap on one transaction's items together
BATCH_GET_KEYS = 100
BATCH_WRITE_ITEMS = 25

_T = TypeVar("_T")


class StoreError(RuntimeError):
    """DynamoDB refused a change for a reason that is no domain outcome (or kept refusing past the retries)."""


class Backoff:
    """Bounded retries with full jitter: attempt n waits a random time up to base * 2**n, capped."""

    def __init__(
        self,
        attempts: int = 6,
        base_seconds: float = 0.025,
        cap_seconds: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
        jitter: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self.attempts = attempts
        self.base_seconds = base_seconds
        self.cap_seconds = cap_seconds
        self.sleep = sleep
        self.jitter = jitter

    def wait(self, attempt: int) -> None:
        self.sleep(self.jitter(0, min(self.cap_seconds, self.base_seconds * 2**attempt)))


class _RetryingClient:
    """The DynamoDB client with throttling and internal errors of single calls retried (bounded).

    botocore's own retries are switched off on the client the store builds, so
    this is the one place that decides how long a call may keep trying.
    """

    def __init__(self, client: Any, backoff: Backoff) -> None:
        self._client = client
        self._backoff = backoff
        self.exceptions = client.exceptions
        self.meta = client.meta

    def __getattr__(self, name: str) -> Any:
        operation = getattr(self._client, name)
        if not callable(operation):
            return operation

        def call(*args: Any, **kwargs: Any) -> Any:
            for attempt in range(self._backoff.attempts):
                try:
                    return operation(*args, **kwargs)
                except self._client.exceptions.ClientError as error:
                    if _error_code(error) not in RETRYABLE_ERRORS or attempt + 1 == self._backoff.attempts:
                        raise
                except TRANSPORT_ERRORS:
                    if attempt + 1 == self._backoff.attempts:
                        raise
                self._backoff.wait(attempt)
            raise AssertionError("unreachable")  # the last attempt returned or raised

        return call


class DynamoTables:
    """The four tables behind one client with the store's retries, one backoff and one clock."""

    def __init__(
        self,
        settings: Settings,
        client: Any | None = None,
        clock: Clock = wall_clock,
        backoff: Backoff | None = None,
    ) -> None:
        if client is None:
            import boto3  # deferred: tests and the local stack pass their own client
            from botocore.config import Config

            client = boto3.client(
                "dynamodb",
                region_name=settings.region,
                endpoint_url=settings.aws_endpoint_url,
                # One warm function serves one request at a time on AWS, but the local stack
                # shares this client between a function's worker threads. Retries are the
                # store's own (below): botocore's would multiply them.
                config=Config(max_pool_connections=64, retries={"mode": "standard", "total_max_attempts": 1}),
            )
        events = getattr(getattr(client, "meta", None), "events", None)
        if events is not None:
            # Once per client, however many stores share it.
            events.register("before-parse.dynamodb.Query", items_as_sent, unique_id="quanttrade.items_as_sent")
        self.backoff = backoff or Backoff()
        self._raw: Any = client
        self._db = _RetryingClient(client, self.backoff)
        self._errors = client.exceptions
        self._settings = settings
        self.connections_table = settings.connections_table
        self.subscriptions_table = settings.subscriptions_table
        self.rooms_table = settings.rooms_table
        self.streams_table = settings.streams_table
        # Expiry of rows and of stream history, rate windows, session age: tests move it.
        self.clock = clock

    def _connection_expiry(self, now: float) -> int:
        """When a row a connection owns expires if its $disconnect never comes (API Gateway's is best effort)."""
        return int(now) + self._settings.connection_ttl_seconds

    def _transact(self, items: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
        """Run one transaction: None once it committed, else each item's cancellation reason.

        Returns reasons only when conditions failed (every reason `None` or
        `ConditionalCheckFailed`): the caller reads them item by item. Conflicts
        and throttling are retried with jittered backoff, a bounded number of
        times; anything else, or too many retries, raises StoreError.
        """
        for attempt in range(self.backoff.attempts):
            try:
                self._raw.transact_write_items(TransactItems=items)
                return None
            except self._errors.TransactionCanceledException as error:
                reasons = _cancellation_reasons(error)
                codes = {reason.get("Code", "None") for reason in reasons} - {"None"}
                if not codes & RETRYABLE_REASONS:
                    if codes == {CONDITION_FAILED}:
                        return reasons
                    raise StoreError(f"transaction cancelled: {', '.join(sorted(codes)) or 'no reason'}") from None
            except self._errors.ClientError as error:
                if _error_code(error) not in RETRYABLE_ERRORS:
                    raise
            except TRANSPORT_ERRORS:
                pass
            if attempt + 1 < self.backoff.attempts:
                self.backoff.wait(attempt)
        raise StoreError(f"transaction still conflicting or throttled after {self.backoff.attempts} attempts")

    def _until_processed(self, requests: list[_T], send: Callable[[list[_T]], list[_T]]) -> list[_T]:
        """Send a batch (`send` returns what DynamoDB left unprocessed: throttling, its answer cap), then what was
        left again with the store's backoff, a bounded number of times; returns what is still left after that."""
        for attempt in range(self.backoff.attempts):
            requests = send(requests)
            if not requests:
                return []
            if attempt + 1 < self.backoff.attempts:
                self.backoff.wait(attempt)
        return requests

    def _count(self, table: str, condition: str | None = None, values: dict[str, Any] | None = None) -> int:
        """Admin statistics only: a counting Scan, never on a hot path."""
        kwargs: dict[str, Any] = {"TableName": table, "Select": "COUNT"}
        if condition:
            kwargs.update(FilterExpression=condition, ExpressionAttributeValues=values)
        return sum(page.get("Count", 0) for page in self._scan_pages(**kwargs))

    def _scan_pages(self, **kwargs: Any) -> Iterator[dict[str, Any]]:
        """Scan page by page, each page read with the store's retries (a paginator would bypass them)."""
        while True:
            page = self._db.scan(**kwargs)
            yield page
            last = page.get("LastEvaluatedKey")
            if not last:
                return
            kwargs["ExclusiveStartKey"] = last

    def _owned(self, table: str, connection_id: str) -> Iterator[dict[str, Any]]:
        """A connection's rows in the subscriptions or rooms table, in the index's sort key order: a Query of its
        `by_connection` index (which projects whole rows)."""
        return self._query(
            TableName=table,
            IndexName="by_connection",
            KeyConditionExpression="connection_id = :c",
            ExpressionAttributeValues={":c": s(connection_id)},
        )

    def _query(self, **kwargs: Any) -> Iterator[dict[str, Any]]:
        for items in self._query_pages(**kwargs):
            yield from items

    def _query_pages(self, **kwargs: Any) -> Iterator[list[dict[str, Any]]]:
        """A Query's items a page at a time, each page read with the store's retries (as `_scan_pages`)."""
        while True:
            page = self._db.query(**kwargs)
            yield page.get("Items", [])
            last = page.get("LastEvaluatedKey")
            if not last:
                return
            kwargs["ExclusiveStartKey"] = last


def failed(reasons: list[dict[str, Any]], index: int) -> bool:
    """Whether the transaction item at `index` was cancelled by its own condition."""
    return len(reasons) > index and reasons[index].get("Code") == CONDITION_FAILED


def chunks(values: Sequence[_T], size: int) -> Iterable[Sequence[_T]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def items_as_sent(response_dict: dict[str, Any], customized_response_dict: dict[str, Any], **_: Any) -> None:
    """A Query's items as DynamoDB sent them, spared botocore's walk of every attribute value through the model.

    That walk costs about 20 us of CPU per row on the x86 bench machine: most of the fan-out's CPU for a large
    audience (10,000 subscribers: about 300 ms before this). The wire form of an item is its parsed form for
    every type but binary (B and BS: base64 on the wire, bytes once parsed), so an answer that may hold one is
    left to botocore, as is any answer that is not a success.
    """
    body = response_dict.get("body")
    if response_dict.get("status_code") != 200 or not isinstance(body, bytes) or b'"B"' in body or b'"BS"' in body:
        return
    answer = json.loads(body)
    items = answer.pop("Items", None)
    if not isinstance(items, list):
        return
    customized_response_dict["Items"] = items
    response_dict["body"] = json.dumps(answer).encode()


def _cancellation_reasons(error: Exception) -> list[dict[str, Any]]:
    return list(getattr(error, "response", {}).get("CancellationReasons", []))


def _error_code(error: Exception) -> str:
    return str(getattr(error, "response", {}).get("Error", {}).get("Code", ""))
