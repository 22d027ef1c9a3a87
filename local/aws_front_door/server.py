"""`AwsFrontDoor`: the HTTP endpoint the functions call as AWS, in front of moto."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.web_request import BaseRequest

from local.aws_front_door.error_responses import (
    CORAL_ERROR,
    access_denied,
    json_error,
    query_error,
    signature_error,
    validation_error,
)
from local.aws_front_door.faults import FaultInjector, FaultRule, fault_response, sdk_attempt
from local.aws_front_door.forwarding import forward
from local.aws_front_door.parsed_request import ParsedRequest, parse_request
from local.aws_front_door.required_permissions import Unplaceable, dynamodb_needs, events_needs, sqs_needs
from local.iam import Decision
from local.principals import Principal, Principals
from local.signed_http import authenticate
from local.sigv4 import SignatureError, scope_of, sign_headers

logger = logging.getLogger("quanttrade.local.aws_endpoint")

_MAX_BODY = 16 * 1024 * 1024
# How long a stop lets requests still in flight finish (see `AwsFrontDoor.stop`).
SHUTDOWN_GRACE_SECONDS = 0.25


class _Refused(Exception):
    """The door answers the request itself (signature refused, access denied, unknown operation)."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


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
                # The stack stops its pumps and functions first, so what is still in flight here is a long
                # poll a pump has already left (a stop does not wait for it): it is not waited for either.
                if self._web_server is not None:
                    await self._web_server.shutdown(timeout=SHUTDOWN_GRACE_SECONDS)
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
                    rule.take(parsed, sdk_attempt(request.headers.get("amz-sdk-request")))
                    self._rule_counts[(rule.service, rule.error)] += 1
                    return rule
        return None

    # ------------------------------------------------------------------ one request

    async def _handle(self, request: BaseRequest) -> web.StreamResponse:
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return json_error(413, CORAL_ERROR + "RequestEntityTooLarge", "Request entity too large")
        try:
            parsed = parse_request(request, body)
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
                    return fault_response(parsed, fault)
        except _Refused as refused:
            return refused.response
        assert self._session is not None
        return await forward(self._session, self.upstream_url, request, body)

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
            raise _Refused(signature_error(service, protocol, error)) from None
        if parsed is None and not principal.is_admin:
            self.denied[principal.name] += 1
            message = (
                f"The local AWS front door cannot authorise this {service} request: it does not know its "
                "operation's resources, so only the local administrator may call it."
            )
            if protocol == "query":
                raise _Refused(query_error(400, "UnknownOperationException", message))
            raise _Refused(json_error(400, CORAL_ERROR + "UnknownOperationException", message))
        return principal

    async def _authorise(self, principal: Principal, parsed: ParsedRequest, request: BaseRequest) -> None:
        try:
            needs = await self._required(parsed)
        except Unplaceable as unknown:
            self.denied[principal.name] += 1
            message = (
                f"User: {principal.arn} is not authorized to perform: {unknown.action}: the local AWS front door "
                "does not know which resources this operation touches, so it refuses it (fail closed)"
            )
            logger.warning("denied: %s", message)
            raise _Refused(access_denied(parsed, message)) from None
        except ValueError as error:
            self.denied[principal.name] += 1
            raise _Refused(validation_error(parsed, str(error))) from None
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
                raise _Refused(access_denied(parsed, message))

    async def _required(self, parsed: ParsedRequest) -> list[tuple[str, str]]:
        """(IAM action, resource ARN) pairs the request needs, in order; ValueError for a malformed request."""
        if parsed.service == "dynamodb":
            return dynamodb_needs(parsed, self.region, self.account)
        if parsed.service == "sqs":
            return sqs_needs(parsed, self.region, self.account)
        if parsed.service == "events":
            return events_needs(parsed, self.region, self.account)
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
