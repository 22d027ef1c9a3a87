"""Faults injected into the functions' AWS calls on purpose, with the errors AWS itself returns.

`FaultInjector` fails a configured share of requests per service;
`FaultRule` targets requests (a service, an operation, a function, the next
N calls or until removed).
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from aiohttp import web

from local.aws_front_door.error_responses import (
    CANCELLATION_MESSAGES,
    DYNAMODB_ERROR,
    json_error,
    query_error,
    sqs_json_error,
    transaction_canceled,
)
from local.aws_front_door.parsed_request import ParsedRequest

_SQS_FAULTABLE = frozenset(
    {
        "SendMessage",
        "SendMessageBatch",
        "ReceiveMessage",
        "DeleteMessage",
        "DeleteMessageBatch",
        "ChangeMessageVisibility",
        "ChangeMessageVisibilityBatch",
    }
)
_DYNAMODB_SINGLE_WRITES = frozenset({"PutItem", "UpdateItem", "DeleteItem"})


@dataclass
class FaultInjector:
    """Fails a share of function principals' requests per service with AWS's real errors; seeded for tests."""

    rates: Mapping[str, float] = field(default_factory=dict)
    seed: int | None = None
    injected: Counter[tuple[str, str]] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        for service, rate in self.rates.items():
            if service not in ("dynamodb", "sqs"):
                raise ValueError(f"fault injection supports dynamodb and sqs, not {service!r}")
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"fault rate for {service} must be within [0, 1], not {rate}")
        self._random = random.Random(self.seed)
        self._lock = threading.Lock()

    def pick(self, parsed: ParsedRequest) -> str | None:
        """The error code to inject for this request, or None to let it through."""
        rate = self.rates.get(parsed.service, 0.0)
        if rate <= 0.0:
            return None
        if parsed.service == "sqs" and parsed.operation not in _SQS_FAULTABLE:
            return None
        with self._lock:
            if self._random.random() >= rate:
                return None
            choices = _fault_choices(parsed)
            code = choices[self._random.randrange(len(choices))]
            self.injected[(parsed.service, code)] += 1
        return code

    def counts(self) -> dict[str, dict[str, int]]:
        """service -> error code -> how many were injected."""
        with self._lock:
            result: dict[str, dict[str, int]] = {}
            for (service, code), count in sorted(self.injected.items()):
                result.setdefault(service, {})[code] = count
            return result


# What each service answers, per error code a rule may inject: (HTTP status, message, the caller's fault).
_RULE_ERRORS: dict[str, dict[str, tuple[int, str, bool]]] = {
    "dynamodb": {
        "ThrottlingException": (400, "Rate of requests exceeds the allowed throughput.", True),
        "ProvisionedThroughputExceededException": (
            400,
            "The level of configured provisioned throughput for the table was exceeded. "
            "Consider increasing your provisioning level with the UpdateTable API.",
            True,
        ),
        "RequestLimitExceeded": (400, "Throughput exceeds the current throughput limit for your account.", True),
        "InternalServerError": (500, "Internal server error", False),
        "TransactionConflictException": (400, "Transaction is ongoing for the item", True),
        "TransactionCanceledException": (400, "Transaction cancelled", True),
        # Not retried by the SDKs: the table is gone (deleted, or a wrong name deployed). The message names it.
        "ResourceNotFoundException": (400, "Requested resource not found", True),
    },
    "sqs": {
        "InternalError": (500, "We encountered an internal error. Please try again.", False),
        "RequestThrottled": (400, "Request is throttled.", True),
        "ServiceUnavailable": (503, "Service is unavailable. Try again later.", False),
    },
    "events": {
        "ThrottlingException": (400, "Rate exceeded", True),
        "InternalException": (500, "An internal error occurred.", False),
    },
    "secretsmanager": {
        "ThrottlingException": (400, "Rate exceeded", True),
        "InternalServiceError": (500, "An error occurred on the server side.", False),
    },
}
_TRANSACTIONS = frozenset({"TransactWriteItems", "TransactGetItems"})


@dataclass
class FaultRule:
    """One targeted fault: matching requests of function principals get `error`, as the service answers it.

    Matches `service` and, when given, `operation` (the API name: `Query`,
    `TransactWriteItems`, `SendMessage`, ...) and `function` (a substring of
    the calling function's name, such as its logical id). `count` limits it to
    the next N matching calls (None: until removed). A
    `TransactionCanceledException` carries `reasons`: one cancellation code per
    item of the transaction, in order ("None" for the rest).

    Counters: `injected`, and `attempts`, the SDK's attempt numbers of the
    failed calls (from botocore's `amz-sdk-request` header), which show how
    the caller retried.
    """

    service: str
    error: str
    operation: str | None = None
    function: str | None = None
    count: int | None = None
    reasons: tuple[str, ...] = ("TransactionConflict",)
    injected: int = 0
    attempts: Counter[int] = field(default_factory=Counter)
    by_operation: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        errors = _RULE_ERRORS.get(self.service)
        if errors is None:
            raise ValueError(f"fault rules cover {sorted(_RULE_ERRORS)}, not {self.service!r}")
        if self.error not in errors:
            raise ValueError(f"{self.service} fault rules inject one of {sorted(errors)}, not {self.error!r}")
        if self.count is not None and self.count < 1:
            raise ValueError(f"a fault rule's count must be at least 1 (or None: until removed), not {self.count}")
        if self.error == "TransactionCanceledException":
            if self.operation not in _TRANSACTIONS:
                raise ValueError("TransactionCanceledException is the answer of TransactWriteItems/TransactGetItems")
            unknown = [code for code in self.reasons if code not in CANCELLATION_MESSAGES]
            if not self.reasons or unknown:
                raise ValueError(f"cancellation reasons are DynamoDB's codes {sorted(CANCELLATION_MESSAGES)}")
        self.reasons = tuple(self.reasons)

    @property
    def exhausted(self) -> bool:
        return self.count is not None and self.injected >= self.count

    def matches(self, parsed: ParsedRequest, principal_name: str) -> bool:
        if parsed.service != self.service or self.exhausted:
            return False
        if self.operation is not None and parsed.operation != self.operation:
            return False
        return self.function is None or self.function in principal_name

    def take(self, parsed: ParsedRequest, attempt: int | None) -> None:
        """Count one injected fault (under the door's lock)."""
        self.injected += 1
        self.by_operation[parsed.operation] += 1
        if attempt is not None:
            self.attempts[attempt] += 1

    def response(self, parsed: ParsedRequest) -> web.Response:
        status, message, sender = _RULE_ERRORS[self.service][self.error]
        if self.service == "sqs":
            if parsed.protocol == "query":
                return query_error(status, self.error, message, sender=sender)
            return sqs_json_error(status, self.error, message, sender=sender)
        if self.service == "dynamodb":
            if self.error == "TransactionCanceledException":
                return transaction_canceled(parsed, self.reasons)
            if self.error == "ResourceNotFoundException":
                table = _table_named(parsed)
                message = f"{message}: Table: {table} not found" if table else message
            return json_error(status, DYNAMODB_ERROR + self.error, message)
        return json_error(status, self.error, message, content_type="application/x-amz-json-1.1")


def _table_named(parsed: ParsedRequest) -> str | None:
    """The table a DynamoDB request names (the first one of a transaction or batch)."""
    params = parsed.params
    if isinstance(params.get("TableName"), str):
        return str(params["TableName"])
    entries = params.get("TransactItems")
    if isinstance(entries, list):
        for entry in entries:
            for item in entry.values() if isinstance(entry, dict) else ():
                if isinstance(item, dict) and isinstance(item.get("TableName"), str):
                    return str(item["TableName"])
    items = params.get("RequestItems")
    if isinstance(items, dict) and items:
        return str(next(iter(items)))
    return None


def sdk_attempt(header: str | None) -> int | None:
    """The attempt number botocore puts in `amz-sdk-request: attempt=2; max=10`."""
    for part in (header or "").split(";"):
        name, _, value = part.strip().partition("=")
        if name == "attempt" and value.isdigit():
            return int(value)
    return None


def _fault_choices(parsed: ParsedRequest) -> tuple[str, ...]:
    if parsed.service == "sqs":
        return ("InternalError", "RequestThrottled")
    if parsed.operation == "TransactWriteItems":
        return ("TransactionCanceledException", "ThrottlingException", "InternalServerError")
    if parsed.operation in _DYNAMODB_SINGLE_WRITES:
        return (
            "TransactionConflictException",
            "ThrottlingException",
            "ProvisionedThroughputExceededException",
            "InternalServerError",
        )
    return ("ThrottlingException", "ProvisionedThroughputExceededException", "InternalServerError")


_DYNAMODB_FAULTS: dict[str, tuple[int, str]] = {
    "ThrottlingException": (400, "Rate of requests exceeds the allowed throughput."),
    "ProvisionedThroughputExceededException": (
        400,
        "The level of configured provisioned throughput for the table was exceeded. "
        "Consider increasing your provisioning level with the UpdateTable API.",
    ),
    "InternalServerError": (500, "Internal server error"),
    "TransactionConflictException": (400, "Transaction is ongoing for the item"),
}


def fault_response(parsed: ParsedRequest, code: str) -> web.Response:
    if parsed.service == "sqs":
        if code == "InternalError":
            message, status, sender = "We encountered an internal error. Please try again.", 500, False
        else:
            message, status, sender = "Request is throttled.", 400, True
        if parsed.protocol == "query":
            return query_error(status, code, message, sender=sender)
        return sqs_json_error(status, code, message, sender=sender)
    if code == "TransactionCanceledException":
        # DynamoDB names the item that conflicted and answers "None" for the others.
        return transaction_canceled(parsed, ("TransactionConflict",))
    status, message = _DYNAMODB_FAULTS[code]
    return json_error(status, DYNAMODB_ERROR + code, message)
