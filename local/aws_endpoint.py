"""The local stack's AWS front door: SigV4, IAM and injected faults in front of moto.

Functions get this server's URL as their AWS endpoint. Every request is

1. recognised: which service (DynamoDB, SQS in its JSON or query protocol,
   EventBridge, Secrets Manager) and which operation;
2. authenticated: its SigV4 signature is recomputed with the secret of the
   access key it claims (`local.sigv4`), for that service and this region;
3. authorised: the IAM action(s) and resource ARN(s) the request needs on AWS
   are derived from its body (per table, index, queue, bus, secret; per item of
   a batch or transaction) and evaluated against the caller's identity policies
   (`local.iam`);
4. optionally failed on purpose, for function principals only, with the
   error AWS itself would return: by targeted rules (`add_fault_rule`: this
   operation, of this function, the next N times or until removed) and at a
   configured rate per service (`configure_faults`);
5. forwarded to moto unchanged, and moto's answer streamed back.

Refusals use each service's real error shape, so botocore raises the same
`ClientError` codes the deployed functions would see. An operation whose
resources the door cannot determine is refused (fail closed) for functions;
the local administrator (provisioning, pumps, simulator, CLI, tests) may call
anything moto serves and is never faulted.

The server runs on its own event loop in its own thread, so the gateway's loop
never waits on moto, and callers (Lambda worker threads, pumps) reach it over
loopback HTTP like any AWS endpoint.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import aiohttp
from aiohttp import web
from aiohttp.web_request import BaseRequest

from local.iam import Decision
from local.principals import Principal, Principals
from local.signed_http import authenticate
from local.sigv4 import Failure, SignatureError, scope_of, sign_headers

logger = logging.getLogger("quanttrade.local.aws_endpoint")

_DYNAMODB_TARGET = "DynamoDB_20120810."
_SQS_TARGET = "AmazonSQS."
_EVENTS_TARGET = "AWSEvents."
_SECRETS_TARGET = "secretsmanager."
_DYNAMODB_ERROR = "com.amazonaws.dynamodb.v20120810#"
_CORAL_ERROR = "com.amazon.coral.service#"
_MAX_BODY = 16 * 1024 * 1024
_BUFFER_LIMIT = 1024 * 1024  # moto answers up to this size are relayed whole; bigger or unsized ones are streamed
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-length", "upgrade", "proxy-connection", "te"}
)

# How each signature failure is answered: JSON services (DynamoDB, EventBridge, Secrets Manager) with
# coral's types and 400 (403 for an unknown key is what the query services say); SQS as the query API.
_JSON_SIGNATURE_ERRORS = {
    Failure.MISSING: (400, "MissingAuthenticationTokenException"),
    Failure.INCOMPLETE: (400, "IncompleteSignatureException"),
    Failure.UNKNOWN_KEY: (400, "UnrecognizedClientException"),
    Failure.EXPIRED: (400, "InvalidSignatureException"),
    Failure.WRONG_SCOPE: (400, "InvalidSignatureException"),
    Failure.BAD_SIGNATURE: (400, "InvalidSignatureException"),
}
_QUERY_SIGNATURE_ERRORS = {
    Failure.MISSING: (403, "MissingAuthenticationToken"),
    Failure.INCOMPLETE: (400, "IncompleteSignature"),
    Failure.UNKNOWN_KEY: (403, "InvalidClientTokenId"),
    Failure.EXPIRED: (403, "SignatureDoesNotMatch"),
    Failure.WRONG_SCOPE: (403, "SignatureDoesNotMatch"),
    Failure.BAD_SIGNATURE: (403, "SignatureDoesNotMatch"),
}

_SQS_BATCH_ACTIONS = {
    "SendMessageBatch": "SendMessage",
    "DeleteMessageBatch": "DeleteMessage",
    "ChangeMessageVisibilityBatch": "ChangeMessageVisibility",
}
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
_TRANSACT_WRITE_ACTIONS = {
    "Put": "PutItem",
    "Update": "UpdateItem",
    "Delete": "DeleteItem",
    "ConditionCheck": "ConditionCheckItem",
}


class _Refused(Exception):
    """The door answers the request itself (signature refused, access denied, unknown operation)."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


class _Unplaceable(Exception):
    """An operation whose resources the door cannot derive: refused, never guessed."""

    def __init__(self, action: str) -> None:
        super().__init__(action)
        self.action = action


@dataclass(frozen=True)
class ParsedRequest:
    """What the door understood of one request."""

    service: str  # the SigV4 signing name: dynamodb, sqs, events, secretsmanager
    protocol: str  # "json" (any JSON protocol, incl. SQS JSON) or "query" (SQS query)
    operation: str
    params: Mapping[str, Any]


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
# DynamoDB's CancellationReasons codes and their messages.
_CANCELLATION_MESSAGES = {
    "None": None,
    "TransactionConflict": "Transaction is ongoing for the item",
    "ThrottlingError": "Throughput exceeds the current capacity of your table or index. DynamoDB is automatically "
    "scaling your table or index so please try again shortly. If exceptions persist, check if you have a hot key.",
    "ProvisionedThroughputExceeded": "The level of configured provisioned throughput for the table was exceeded.",
    "ConditionalCheckFailed": "The conditional request failed",
    "ItemCollectionSizeLimitExceeded": "Collection size exceeded.",
    "ValidationError": "One or more parameter values were invalid.",
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
            unknown = [code for code in self.reasons if code not in _CANCELLATION_MESSAGES]
            if not self.reasons or unknown:
                raise ValueError(f"cancellation reasons are DynamoDB's codes {sorted(_CANCELLATION_MESSAGES)}")
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
                return _query_error(status, self.error, message, sender=sender)
            return _sqs_json_error(status, self.error, message, sender=sender)
        if self.service == "dynamodb":
            if self.error == "TransactionCanceledException":
                return _transaction_canceled(parsed, self.reasons)
            if self.error == "ResourceNotFoundException":
                table = _table_named(parsed)
                message = f"{message}: Table: {table} not found" if table else message
            return _json_error(status, _DYNAMODB_ERROR + self.error, message)
        return _json_error(status, self.error, message, content_type="application/x-amz-json-1.1")


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


def _sdk_attempt(header: str | None) -> int | None:
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


class AwsFrontDoor:
    """An HTTP endpoint on `host` that authenticates, authorises (and may fault) every call before moto sees it.

    `principals` is the registry shared with the gateway. `secret_arns` maps
    secret names to their full ARNs (with AWS's random suffix) for requests that
    name a secret; names not in it are resolved by asking moto. `faults` maps
    "dynamodb" / "sqs" to the share of function requests that fail.
    """

    def __init__(
        self,
        upstream_url: str,
        principals: Principals,
        *,
        region: str,
        host: str = "127.0.0.1",
        port: int = 0,
        faults: Mapping[str, float] | None = None,
        fault_seed: int | None = None,
        secret_arns: Mapping[str, str] | None = None,
    ) -> None:
        self.upstream_url = upstream_url.rstrip("/")
        self.principals = principals
        self.region = region
        self.account = principals.account
        self.host = host
        self._port = port
        self.faults = FaultInjector(dict(faults or {}), fault_seed)
        self.rules: list[FaultRule] = []  # checked in order before the rates; the first match answers
        self._rule_counts: Counter[tuple[str, str]] = Counter()
        self._rules_lock = threading.Lock()
        self.secret_arns: dict[str, str] = dict(secret_arns or {})
        self.denied: Counter[str] = Counter()  # principal name -> refused requests
        # (principal name, service, operation) -> requests answered: what CloudTrail would list, counted.
        self.calls: Counter[tuple[str, str, str]] = Counter()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._web_server: web.Server | None = None
        self._session: aiohttp.ClientSession | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def port(self) -> int:
        return self._port

    @property
    def endpoint_url(self) -> str:
        """What functions get as AWS_ENDPOINT_URL."""
        return f"http://{self.host}:{self._port}"

    def start(self, timeout: float = 10.0) -> AwsFrontDoor:
        if self._thread is not None:
            return self
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._serve())
            except BaseException as error:
                failure.append(error)
                ready.set()
                return
            ready.set()
            loop.run_forever()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="aws-front-door", daemon=True)
        self._thread.start()
        if not ready.wait(timeout) or failure:
            self._thread = None
            raise RuntimeError(f"the AWS front door did not start: {failure[0] if failure else 'timed out'}")
        logger.info("AWS front door on %s in front of %s", self.endpoint_url, self.upstream_url)
        return self

    async def _serve(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self._port))
        self._port = sock.getsockname()[1]
        # One keep-alive pool to moto (local.moto_http keeps connections open and reuses its threads).
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=64, force_close=False),
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None),
        )
        loop = asyncio.get_running_loop()

        def make_request(message: Any, payload: Any, protocol: Any, writer: Any, task: Any) -> BaseRequest:
            # aiohttp buffers 1 MB by default; a BatchWriteItem may be 16 MB.
            return BaseRequest(message, payload, protocol, writer, task, loop, client_max_size=_MAX_BODY)

        self._web_server = web.Server(self._handle, request_factory=make_request, access_log=None)
        self._server = await loop.create_server(self._web_server, sock=sock)

    def stop(self, timeout: float = 10.0) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return

        async def close() -> None:
            if self._server is not None:
                self._server.close()
                # Keep-alive connections (boto3 pools them) hold handler tasks: end them before the loop stops.
                if self._web_server is not None:
                    await self._web_server.shutdown(timeout=2.0)
                await self._server.wait_closed()
            if self._session is not None:
                await self._session.close()

        asyncio.run_coroutine_threadsafe(close(), loop).result(timeout)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        loop.close()
        self._loop = self._thread = None

    def __enter__(self) -> AwsFrontDoor:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def call_counts(self) -> dict[str, dict[str, int]]:
        """Requests per principal, as {principal: {"service:Operation": count}}."""
        counts: dict[str, dict[str, int]] = {}
        for (principal, service, operation), count in sorted(self.calls.items()):
            counts.setdefault(principal, {})[f"{service}:{operation}"] = count
        return counts

    def fault_counts(self) -> dict[str, dict[str, int]]:
        """service -> error code -> faults injected so far, by rates and by rules."""
        counts = self.faults.counts()
        with self._rules_lock:
            for (service, code), count in sorted(self._rule_counts.items()):
                by_code = counts.setdefault(service, {})
                by_code[code] = by_code.get(code, 0) + count
        return counts

    def configure_faults(self, rates: Mapping[str, float], seed: int | None = None) -> None:
        """Fail these shares of function requests from now on ({} stops injecting); counters start again."""
        self.faults = FaultInjector(dict(rates), seed)
        with self._rules_lock:
            self._rule_counts.clear()

    def add_fault_rule(
        self,
        service: str,
        error: str,
        *,
        operation: str | None = None,
        function: str | None = None,
        count: int | None = None,
        reasons: tuple[str, ...] = ("TransactionConflict",),
    ) -> FaultRule:
        """From now on, answer matching function requests with `error` (see `FaultRule`); returns the rule."""
        rule = FaultRule(service, error, operation=operation, function=function, count=count, reasons=reasons)
        with self._rules_lock:
            self.rules.append(rule)
        return rule

    def remove_fault_rule(self, rule: FaultRule) -> None:
        with self._rules_lock:
            if rule in self.rules:
                self.rules.remove(rule)

    @contextmanager
    def fault_rule(self, service: str, error: str, **options: Any) -> Iterator[FaultRule]:
        """`add_fault_rule` for the duration of a `with` block."""
        rule = self.add_fault_rule(service, error, **options)
        try:
            yield rule
        finally:
            self.remove_fault_rule(rule)

    def _rule_for(self, parsed: ParsedRequest, principal: Principal, request: BaseRequest) -> FaultRule | None:
        with self._rules_lock:
            for rule in self.rules:
                if rule.matches(parsed, principal.name):
                    rule.take(parsed, _sdk_attempt(request.headers.get("amz-sdk-request")))
                    self._rule_counts[(rule.service, rule.error)] += 1
                    return rule
        return None

    # ------------------------------------------------------------------ one request

    async def _handle(self, request: BaseRequest) -> web.StreamResponse:
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _json_error(413, _CORAL_ERROR + "RequestEntityTooLarge", "Request entity too large")
        try:
            parsed = _parse(request, body)
            principal = self._authenticate(request, body, parsed)
            if parsed is not None:
                self.calls[(principal.name, parsed.service, parsed.operation)] += 1
            if not principal.is_admin:
                assert parsed is not None
                await self._authorise(principal, parsed, request)
                rule = self._rule_for(parsed, principal, request) if self.rules else None
                if rule is not None:
                    logger.info(
                        "injected %s into %s %s of %s", rule.error, parsed.service, parsed.operation, principal.name
                    )
                    return rule.response(parsed)
                fault = self.faults.pick(parsed)
                if fault is not None:
                    return _fault_response(parsed, fault)
        except _Refused as refused:
            return refused.response
        return await self._forward(request, body)

    def _authenticate(self, request: BaseRequest, body: bytes, parsed: ParsedRequest | None) -> Principal:
        claimed = scope_of(request.headers.get("Authorization"))
        service = parsed.service if parsed is not None else (claimed[1] if claimed else "unknown")
        if parsed is not None:
            protocol = parsed.protocol
        else:
            # Services the door does not parse still get an answer their SDK can read: XML for query protocols.
            form = request.headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded")
            protocol = "query" if form else "json"
        try:
            principal = authenticate(request, body, self.principals, region=self.region, service=service)
        except SignatureError as error:
            raise _Refused(_signature_error(service, protocol, error)) from None
        if parsed is None and not principal.is_admin:
            self.denied[principal.name] += 1
            message = (
                f"The local AWS front door cannot authorise this {service} request: it does not know its "
                "operation's resources, so only the local administrator may call it."
            )
            if protocol == "query":
                raise _Refused(_query_error(400, "UnknownOperationException", message))
            raise _Refused(_json_error(400, _CORAL_ERROR + "UnknownOperationException", message))
        return principal

    async def _authorise(self, principal: Principal, parsed: ParsedRequest, request: BaseRequest) -> None:
        try:
            needs = await self._required(parsed)
        except _Unplaceable as unknown:
            self.denied[principal.name] += 1
            message = (
                f"User: {principal.arn} is not authorized to perform: {unknown.action}: the local AWS front door "
                "does not know which resources this operation touches, so it refuses it (fail closed)"
            )
            logger.warning("denied: %s", message)
            raise _Refused(_access_denied(parsed, message)) from None
        except ValueError as error:
            self.denied[principal.name] += 1
            raise _Refused(_validation_error(parsed, str(error))) from None
        context = {
            **principal.condition_keys(),
            "aws:RequestedRegion": self.region,
            "aws:SecureTransport": "false",
            "aws:CurrentTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "aws:EpochTime": str(int(time.time())),
            "aws:SourceIp": request.remote or "127.0.0.1",
        }
        for action, resource in needs:
            decision = principal.decide(action, resource, context)
            if decision is not Decision.ALLOW:
                self.denied[principal.name] += 1
                message = principal.denial_message(action, resource, decision)
                logger.warning("denied: %s", message)
                raise _Refused(_access_denied(parsed, message))

    async def _required(self, parsed: ParsedRequest) -> list[tuple[str, str]]:
        """(IAM action, resource ARN) pairs the request needs, in order; ValueError for a malformed request."""
        if parsed.service == "dynamodb":
            return _dynamodb_needs(parsed, self.region, self.account)
        if parsed.service == "sqs":
            return _sqs_needs(parsed, self.region, self.account)
        if parsed.service == "events":
            return _events_needs(parsed, self.region, self.account)
        if parsed.service == "secretsmanager":
            secret_id = parsed.params.get("SecretId")
            if not isinstance(secret_id, str) or not secret_id:
                if parsed.operation in ("ListSecrets", "GetRandomPassword", "BatchGetSecretValue"):
                    return [(f"secretsmanager:{parsed.operation}", "*")]
                raise ValueError("SecretId is required")
            return [(f"secretsmanager:{parsed.operation}", await self._secret_arn(secret_id))]
        raise ValueError(f"unsupported service {parsed.service}")

    async def _secret_arn(self, secret_id: str) -> str:
        if secret_id.startswith("arn:"):
            return secret_id
        known = self.secret_arns.get(secret_id)
        if known is not None:
            return known
        body = json.dumps({"SecretId": secret_id}).encode()
        url = self.upstream_url + "/"
        headers = sign_headers(
            "POST",
            url,
            self.principals.admin.credentials,
            service="secretsmanager",
            region=self.region,
            body=body,
            headers={"X-Amz-Target": "secretsmanager.DescribeSecret", "Content-Type": "application/x-amz-json-1.1"},
        )
        assert self._session is not None
        async with self._session.post(url, data=body, headers=headers) as response:
            answer = await response.json(content_type=None)
        arn = answer.get("ARN") if isinstance(answer, dict) else None
        if not isinstance(arn, str):
            # No such secret: AWS authorises against the name's ARN pattern; moto then says ResourceNotFound.
            return f"arn:aws:secretsmanager:{self.region}:{self.account}:secret:{secret_id}"
        self.secret_arns[secret_id] = arn
        return arn

    async def _forward(self, request: BaseRequest, body: bytes) -> web.StreamResponse:
        assert self._session is not None
        headers = [(name, value) for name, value in request.headers.items() if name.lower() not in _HOP_BY_HOP]
        try:
            upstream = await self._session.request(
                request.method,
                self.upstream_url + request.raw_path,
                data=body,
                headers=headers,
                allow_redirects=False,
                skip_auto_headers=("Content-Type", "Accept-Encoding", "User-Agent", "Accept"),
            )
        except aiohttp.ClientError as error:
            logger.error("moto did not answer: %s", error)
            return web.Response(status=502, text=f"moto did not answer: {error}")
        try:
            length = upstream.content_length
            if length is not None and length <= _BUFFER_LIMIT:
                # Small answers (nearly all of moto's) go back in one write: headers and body written apart
                # doubled the door's added latency (measured with bench.front_door: 5-6 ms against 3 ms at p50).
                buffered = web.Response(status=upstream.status, reason=upstream.reason, body=await upstream.read())
                _copy_headers(upstream, buffered)
                return buffered
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            _copy_headers(upstream, response)
            if length is not None:
                response.content_length = length
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response
        finally:
            upstream.release()


def _copy_headers(upstream: aiohttp.ClientResponse, response: web.StreamResponse) -> None:
    for name, value in upstream.headers.items():
        if name.lower() not in _HOP_BY_HOP:
            response.headers.add(name, value)


# ---------------------------------------------------------------------- recognising requests


def _parse(request: BaseRequest, body: bytes) -> ParsedRequest | None:
    """The service and operation of a request, or None when it is none the door knows."""
    target = request.headers.get("X-Amz-Target", "")
    if target:
        for prefix, service in (
            (_DYNAMODB_TARGET, "dynamodb"),
            (_SQS_TARGET, "sqs"),
            (_EVENTS_TARGET, "events"),
            (_SECRETS_TARGET, "secretsmanager"),
        ):
            if target.startswith(prefix):
                return ParsedRequest(service, "json", target[len(prefix) :], _json_body(body))
        return None
    claimed = scope_of(request.headers.get("Authorization"))
    if claimed is not None and claimed[1] == "sqs":
        form = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        form.update(dict(parse_qsl(request.query_string, keep_blank_values=True)))
        action = form.get("Action")
        if action:
            if "QueueUrl" not in form and request.path.count("/") == 2:
                form["QueueUrl"] = request.path  # the query API may address the queue by the request path
            return ParsedRequest("sqs", "query", action, form)
    return None


def _json_body(body: bytes) -> dict[str, Any]:
    if not body:
        return {}
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return {"__malformed__": True}
    return document if isinstance(document, dict) else {"__malformed__": True}


def _table_arn(name: Any, region: str, account: str) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError("TableName is required")
    if name.startswith("arn:"):
        return name
    return f"arn:aws:dynamodb:{region}:{account}:table/{name}"


def _dynamodb_needs(parsed: ParsedRequest, region: str, account: str) -> list[tuple[str, str]]:
    params, operation = parsed.params, parsed.operation
    if params.get("__malformed__"):
        raise ValueError("the request body is not a JSON object")
    if operation in ("BatchGetItem", "BatchWriteItem"):
        items = params.get("RequestItems")
        if not isinstance(items, dict) or not items:
            raise ValueError("RequestItems is required")
        return [(f"dynamodb:{operation}", _table_arn(table, region, account)) for table in items]
    if operation in ("TransactWriteItems", "TransactGetItems"):
        entries = params.get("TransactItems")
        if not isinstance(entries, list) or not entries:
            raise ValueError("TransactItems is required")
        needs = []
        for entry in entries:
            if not isinstance(entry, dict) or len(entry) != 1:
                raise ValueError("each TransactItems entry holds exactly one operation")
            ((kind, item),) = entry.items()
            if operation == "TransactGetItems":
                action = "GetItem" if kind == "Get" else None
            else:
                action = _TRANSACT_WRITE_ACTIONS.get(kind)
            if action is None or not isinstance(item, dict):
                raise ValueError(f"unknown transaction operation {kind!r}")
            needs.append((f"dynamodb:{action}", _table_arn(item.get("TableName"), region, account)))
        return needs
    if operation in ("ListTables", "DescribeLimits", "DescribeEndpoints"):
        return [(f"dynamodb:{operation}", "*")]
    if "TableName" not in params and "TableArn" not in params and "ResourceArn" not in params:
        raise _Unplaceable(f"dynamodb:{operation}")
    arn = _table_arn(params.get("TableName") or params.get("TableArn") or params.get("ResourceArn"), region, account)
    index = params.get("IndexName")
    if isinstance(index, str) and index:
        arn = f"{arn}/index/{index}"
    return [(f"dynamodb:{operation}", arn)]


def _queue_arn(queue_url: Any, region: str, account: str) -> str:
    if not isinstance(queue_url, str) or not queue_url:
        raise ValueError("QueueUrl is required")
    parts = [part for part in urlsplit(queue_url).path.split("/") if part]
    if len(parts) != 2:
        raise ValueError(f"{queue_url!r} is not a queue URL")
    owner, name = parts
    return f"arn:aws:sqs:{region}:{owner}:{name}"


def _sqs_needs(parsed: ParsedRequest, region: str, account: str) -> list[tuple[str, str]]:
    params, operation = parsed.params, parsed.operation
    if params.get("__malformed__"):
        raise ValueError("the request body is not a JSON object")
    action = f"sqs:{_SQS_BATCH_ACTIONS.get(operation, operation)}"
    if operation == "ListQueues":
        return [(action, "*")]
    if operation in ("GetQueueUrl", "CreateQueue"):
        name = params.get("QueueName")
        if not isinstance(name, str) or not name:
            raise ValueError("QueueName is required")
        owner = params.get("QueueOwnerAWSAccountId") or account
        return [(action, f"arn:aws:sqs:{region}:{owner}:{name}")]
    if "QueueUrl" not in params:
        raise _Unplaceable(f"sqs:{operation}")
    return [(action, _queue_arn(params["QueueUrl"], region, account))]


def _events_needs(parsed: ParsedRequest, region: str, account: str) -> list[tuple[str, str]]:
    params, operation = parsed.params, parsed.operation
    if params.get("__malformed__"):
        raise ValueError("the request body is not a JSON object")

    def bus_arn(name: Any) -> str:
        if name is None or name == "":
            name = "default"
        if not isinstance(name, str):
            raise ValueError("EventBusName must be a string")
        return name if name.startswith("arn:") else f"arn:aws:events:{region}:{account}:event-bus/{name}"

    if operation == "PutEvents":
        entries = params.get("Entries")
        if not isinstance(entries, list) or not entries:
            raise ValueError("Entries is required")
        arns = dict.fromkeys(
            bus_arn(entry.get("EventBusName") if isinstance(entry, dict) else None) for entry in entries
        )
        return [("events:PutEvents", arn) for arn in arns]
    if operation == "DescribeEventBus":
        return [("events:DescribeEventBus", bus_arn(params.get("Name")))]
    raise _Unplaceable(f"events:{operation}")


# ---------------------------------------------------------------------- answers


def _request_id() -> str:
    raw = os.urandom(16).hex()
    return f"{raw[:8]}-{raw[8:12]}-{raw[12:16]}-{raw[16:20]}-{raw[20:]}"


def _json_error(
    status: int,
    error_type: str,
    message: str,
    *,
    content_type: str = "application/x-amz-json-1.0",
    extra: Mapping[str, Any] | None = None,
    message_key: str = "message",
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    document: dict[str, Any] = {"__type": error_type, message_key: message}
    document.update(extra or {})
    return web.Response(
        status=status,
        body=json.dumps(document).encode(),
        headers={"Content-Type": content_type, "x-amzn-RequestId": _request_id(), **(headers or {})},
    )


def _query_error(status: int, code: str, message: str, *, sender: bool = True) -> web.Response:
    request_id = _request_id()
    kind = "Sender" if sender else "Receiver"
    document = (
        '<?xml version="1.0"?><ErrorResponse xmlns="http://queue.amazonaws.com/doc/2012-11-05/">'
        f"<Error><Type>{kind}</Type><Code>{code}</Code><Message>{_xml_escape(message)}</Message><Detail/></Error>"
        f"<RequestId>{request_id}</RequestId></ErrorResponse>"
    )
    return web.Response(
        status=status, body=document.encode(), headers={"Content-Type": "text/xml", "x-amzn-RequestId": request_id}
    )


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def _sqs_json_error(status: int, code: str, message: str, *, sender: bool = True) -> web.Response:
    # SQS's JSON protocol is query-compatible: botocore takes the code from x-amzn-query-error.
    return _json_error(
        status,
        f"com.amazonaws.sqs#{code}",
        message,
        headers={"x-amzn-query-error": f"{code};{'Sender' if sender else 'Receiver'}"},
    )


def _signature_error(service: str, protocol: str, error: SignatureError) -> web.Response:
    if service == "sqs":
        status, code = _QUERY_SIGNATURE_ERRORS[error.failure]
        if protocol == "query":
            return _query_error(status, code, error.message)
        return _sqs_json_error(status, code, error.message)
    status, code = _JSON_SIGNATURE_ERRORS[error.failure]
    return _json_error(status, _CORAL_ERROR + code, error.message)


def _access_denied(parsed: ParsedRequest, message: str) -> web.Response:
    if parsed.service == "dynamodb":
        return _json_error(400, _DYNAMODB_ERROR + "AccessDeniedException", message)
    if parsed.service == "sqs":
        if parsed.protocol == "query":
            return _query_error(403, "AccessDenied", message)
        return _sqs_json_error(403, "AccessDenied", message)
    # EventBridge and Secrets Manager speak JSON 1.1 and capitalise Message.
    return _json_error(
        400, "AccessDeniedException", message, content_type="application/x-amz-json-1.1", message_key="Message"
    )


def _validation_error(parsed: ParsedRequest, message: str) -> web.Response:
    if parsed.service == "dynamodb":
        return _json_error(400, _CORAL_ERROR + "ValidationException", message)
    if parsed.service == "sqs":
        if parsed.protocol == "query":
            return _query_error(400, "InvalidParameterValue", message)
        return _sqs_json_error(400, "InvalidParameterValue", message)
    return _json_error(400, "ValidationException", message, content_type="application/x-amz-json-1.1")


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


def _fault_response(parsed: ParsedRequest, code: str) -> web.Response:
    if parsed.service == "sqs":
        if code == "InternalError":
            message, status, sender = "We encountered an internal error. Please try again.", 500, False
        else:
            message, status, sender = "Request is throttled.", 400, True
        if parsed.protocol == "query":
            return _query_error(status, code, message, sender=sender)
        return _sqs_json_error(status, code, message, sender=sender)
    if code == "TransactionCanceledException":
        # DynamoDB names the item that conflicted and answers "None" for the others.
        return _transaction_canceled(parsed, ("TransactionConflict",))
    status, message = _DYNAMODB_FAULTS[code]
    return _json_error(status, _DYNAMODB_ERROR + code, message)


def _transaction_canceled(parsed: ParsedRequest, codes: tuple[str, ...]) -> web.Response:
    """DynamoDB's TransactionCanceledException: one reason per item, `codes` in order, "None" for the rest."""
    entries = parsed.params.get("TransactItems")
    size = len(entries) if isinstance(entries, list) and entries else 1
    reasons: list[dict[str, str]] = []
    for index in range(size):
        code = codes[index] if index < len(codes) else "None"
        message = _CANCELLATION_MESSAGES.get(code)
        reasons.append({"Code": code, "Message": message} if message else {"Code": code})
    listed = ", ".join(reason["Code"] for reason in reasons)
    return _json_error(
        400,
        _DYNAMODB_ERROR + "TransactionCanceledException",
        f"Transaction cancelled, please refer cancellation reasons for specific reasons [{listed}]",
        message_key="Message",
        extra={"CancellationReasons": reasons},
    )
