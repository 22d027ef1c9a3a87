"""A local stand-in for one stage of an API Gateway WebSocket API.

One aiohttp server on one port plays both halves of the managed service:

* the WebSocket endpoint clients connect to (`ws://host:port/`), with the
  `$connect` REQUEST authorizer, the `$connect` / `$disconnect` / message routes
  selected by `$request.body.action`, and API Gateway's limits and close codes;
* the Management API (`POST|GET|DELETE /@connections/{id}`, with or without the
  stage prefix) that boto3's `apigatewaymanagementapi` client talks to, with
  API Gateway's error shapes (410 Gone, 413, 429, 403), and faults injected on
  purpose where API Gateway would produce them (`add_management_fault`: 429
  LimitExceededException, 500 or a delay, for some connections or all, the next
  N calls or until removed; `configure_management_faults`: a share of all calls).

Handlers run as Lambda functions do: in thread pools sized like their
concurrency (see `local.lambda_runtime`), receiving the same event shapes and
context objects they get on AWS. Handler code cannot tell the two apart; only
endpoint URLs differ.

Choices where API Gateway's behaviour is not documented precisely:

* Frames of one connection are dispatched to the function's pool in arrival
  order, but run concurrently, as Lambda invocations do; nothing serialises them.
* Only data frames from the client count as activity for the idle timeout and
  `lastActiveAt`; control frames are answered but keep nothing alive (AWS's
  advice is to keep connections alive with messages), and posts to the client
  do not count either.
* Close codes: idle timeout, maximum duration and server shutdown close with
  1001 "Going away"; `DELETE @connections` closes with 1000; oversized frames or
  messages with 1009. `$disconnect` reports the code the connection ended with:
  the client's own code, 1005 when its close frame carried none, 1006 when the
  TCP connection died without a close frame.
* Authorizer context values are stringified ("true", "1") before they reach the
  route events, as API Gateway does; nested values fail the handshake with 500.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import random
import re
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple
from urllib.parse import unquote_plus

from aiohttp import WSCloseCode, WSMsgType, hdrs, web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_websocket import WebSocketError
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from local.iam import Decision
from local.lambda_runtime import DEFAULT_ACCOUNT, DEFAULT_REGION, Handler, LambdaFunction, LambdaShutdownError
from local.principals import Principals
from local.signed_http import access_denied, authenticate, request_context, signature_refusal
from local.sigv4 import SignatureError

logger = logging.getLogger("quanttrade.local.gateway")
access_logger = logging.getLogger("quanttrade.local.gateway.access")

ReadinessCheck = Callable[[], Awaitable[bool]]
HttpHandler = Callable[[web.Request], Awaitable[StreamResponse]]

GOING_AWAY = "Going away"
NO_STATUS_REASON = "Client-side close frame status not set"
ABNORMAL_REASON = "Connection closed abnormally"
MESSAGE_TOO_BIG_REASON = "Message too big"
STOP_HANDLER_GRACE_SECONDS = 0.5  # see LocalGateway.start

# The writer never waits for the socket to drain: a post must answer at once, and
# a client that stops reading is reported as LimitExceeded (see client_buffer_bytes)
# instead of stalling the fan-out function that posted to it.
_NO_WRITE_BACKPRESSURE = 1 << 62
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_SPECIAL_ROUTES = frozenset({"$connect", "$disconnect"})
_JSON = "application/json"
_EMPTY_HEADERS: Mapping[str, str] = {}


@dataclass(frozen=True)
class GatewayConfig:
    """One stage of the WebSocket API. Defaults are API Gateway's own quotas."""

    host: str = "127.0.0.1"
    port: int = 8081  # 0 picks a free port; `LocalGateway.port` tells which
    stage: str = "local"
    region: str = DEFAULT_REGION
    account: str = DEFAULT_ACCOUNT
    api_id: str = "qtlocalapi"
    domain_name: str | None = None  # None: the Host header the client connected with
    max_message_bytes: int = 128 * 1024
    max_frame_bytes: int | None = 32 * 1024  # None: only the message size is limited
    idle_timeout: float = 600.0
    max_connection_seconds: float = 7200.0
    close_timeout: float = 3.0  # how long a closing handshake may take before the socket is dropped
    # How long stopping the gateway waits for the `$disconnect` of every connection it closes; what is
    # still running then is abandoned (on AWS `$disconnect` is best effort too), so a stop stays bounded:
    # with the simulator's 2 s and moto's 1.5 s, Ctrl-C ends the stack within 10 s.
    stop_disconnect_seconds: float = 4.0
    management_rate_per_second: float = 10_000.0
    management_burst: int | None = None  # None: one second's worth
    connect_rate_per_second: float | None = 500.0  # new connections; None: unlimited
    client_buffer_bytes: int = 4 * 1024 * 1024  # unsent bytes to a client before posts get 429
    two_way_routes: frozenset[str] = frozenset()  # routes with a route response: the handler's body goes back
    identity_sources: tuple[str, ...] = ("route.request.querystring.token",)
    route_selection_expression: str = "$request.body.action"  # only $request.body.<field> is supported
    pool_sizes: Mapping[str, int] = field(default_factory=dict)  # function name -> worker threads
    default_pool_size: int = 8
    default_timeout_seconds: float = 10.0
    ready_check_timeout: float = 2.0
    management_fault_rate: float = 0.0  # share of Management API calls answered 429 or 500 on purpose
    management_fault_seed: int | None = None


# What each kind of injected Management API fault answers: API Gateway's own status, error type and message.
_THROTTLED = (429, "LimitExceededException", "Rate exceeded")
_INTERNAL = (500, "InternalServerErrorException", "Internal server error")
MANAGEMENT_FAULT_KINDS = ("throttle", "error", "delay")
_MANAGEMENT_METHODS = frozenset({hdrs.METH_POST, hdrs.METH_GET, hdrs.METH_DELETE})


class ManagementCall(NamedTuple):
    method: str
    connection_id: str
    status: int


@dataclass
class ManagementFault:
    """One rule of injected Management API faults.

    `kind`: "throttle" answers 429 LimitExceededException (as API Gateway's
    account throttle does), "error" answers 500 InternalServerErrorException,
    "delay" holds the call `delay` seconds before serving it (a call whose
    caller hung up meanwhile, e.g. after its own timeout, is then dropped
    undelivered). It applies to calls with one of `methods` (posts by default)
    to `connections` (None: every connection) by a `caller` whose principal
    name contains it (a function's name or logical id; None: any caller), for
    the next `count` matching calls (None: until removed).

    Counters: `injected`, and per connection and per method.
    """

    kind: str
    connections: frozenset[str] | None = None
    methods: frozenset[str] = frozenset({hdrs.METH_POST})
    caller: str | None = None
    count: int | None = None
    delay: float = 0.0
    injected: int = 0
    by_connection: Counter[str] = field(default_factory=Counter)
    by_method: Counter[str] = field(default_factory=Counter)
    dropped: int = 0  # delayed calls whose caller was gone when the delay ended

    def __post_init__(self) -> None:
        if self.kind not in MANAGEMENT_FAULT_KINDS:
            raise ValueError(f"a Management API fault is one of {MANAGEMENT_FAULT_KINDS}, not {self.kind!r}")
        methods = frozenset(method.upper() for method in self.methods)
        if not methods or not methods <= _MANAGEMENT_METHODS:
            raise ValueError(f"Management API faults apply to {sorted(_MANAGEMENT_METHODS)}, not {sorted(methods)}")
        self.methods = methods
        if self.connections is not None:
            self.connections = frozenset(self.connections)
        if self.count is not None and self.count < 1:
            raise ValueError(f"a fault's count must be at least 1 (or None: until removed), not {self.count}")
        if (self.kind == "delay") != (self.delay > 0):
            raise ValueError("a delay fault needs a positive delay, and only a delay fault takes one")

    @property
    def exhausted(self) -> bool:
        return self.count is not None and self.injected >= self.count

    def matches(self, method: str, connection_id: str, caller: str) -> bool:
        if self.exhausted or method not in self.methods:
            return False
        if self.caller is not None and self.caller not in caller:
            return False
        return self.connections is None or connection_id in self.connections


class _ManagementFaults:
    """The gateway's injected Management API faults: rules first, then a seeded share of all calls.

    Rules are added and removed from any thread (tests drive the stack from
    their own); the gateway's loop consults them.
    """

    def __init__(self, rate: float, seed: int | None) -> None:
        self.rules: list[ManagementFault] = []
        self._lock = threading.Lock()
        self.configure(rate, seed)

    def configure(self, rate: float, seed: int | None) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"the Management API fault rate must be within [0, 1], not {rate}")
        with self._lock:
            self.rate = rate
            self._random = random.Random(seed)
            self.counts: Counter[str] = Counter()

    def add(self, rule: ManagementFault) -> ManagementFault:
        with self._lock:
            self.rules.append(rule)
        return rule

    def remove(self, rule: ManagementFault) -> None:
        with self._lock:
            if rule in self.rules:
                self.rules.remove(rule)

    def pick(self, method: str, connection_id: str, caller: str) -> ManagementFault | tuple[int, str, str] | None:
        """The rule that takes this call, a random answer (status, type, message), or None to serve it."""
        with self._lock:
            for rule in self.rules:
                if rule.matches(method, connection_id, caller):
                    rule.injected += 1
                    rule.by_connection[connection_id] += 1
                    rule.by_method[method] += 1
                    self.counts["delayed" if rule.kind == "delay" else _answer_of(rule.kind)[1]] += 1
                    return rule
            if self.rate > 0.0 and self._random.random() < self.rate:
                answer = _THROTTLED if self._random.random() < 0.5 else _INTERNAL
                self.counts[answer[1]] += 1
                return answer
        return None


def _answer_of(kind: str) -> tuple[int, str, str]:
    return _THROTTLED if kind == "throttle" else _INTERNAL


class _Refusal(Exception):
    """A handshake API Gateway answers with an HTTP error instead of an upgrade."""

    def __init__(self, status: int, message: str | None, error_type: str | None = None, body: str | None = None):
        super().__init__(status)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.body = body

    def response(self) -> web.Response:
        headers = {"x-amzn-RequestId": _new_id()}
        if self.error_type:
            headers["x-amzn-ErrorType"] = self.error_type
        if self.body is not None:
            return web.Response(status=self.status, text=self.body, headers=headers)
        return web.Response(
            status=self.status, body=json.dumps({"message": self.message}), content_type=_JSON, headers=headers
        )


class _AuthorizerConfigurationError(Exception):
    """The authorizer answered with something API Gateway cannot use (a 500 to the client)."""


class _TokenBucket:
    """Rate limit with bursts, as API Gateway throttles. Used from the event loop thread only."""

    __slots__ = ("_capacity", "_rate", "_stamp", "_tokens")

    def __init__(self, rate_per_second: float, burst: int | None) -> None:
        self._rate = float(rate_per_second)
        self._capacity = float(burst if burst is not None else max(1.0, rate_per_second))
        self._tokens = self._capacity
        self._stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        tokens = min(self._capacity, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if tokens < 1.0:
            self._tokens = tokens
            return False
        self._tokens = tokens - 1.0
        return True


class _FrameSizeGuard:
    """Sits in front of aiohttp's WebSocket parser and fails the connection on an oversized data frame.

    aiohttp limits whole messages only; API Gateway also limits each frame
    (32 KB), so a client that sends a 40 KB message unfragmented, as browsers
    do, is cut off on AWS. Only frame headers are inspected; bytes pass through
    untouched.
    """

    __slots__ = ("_header", "_limit", "_parser", "_queue", "_skip", "_tripped")

    def __init__(self, parser: Any, queue: Any, limit: int) -> None:
        self._parser = parser
        self._queue = queue
        self._limit = limit
        self._header = bytearray()
        self._skip = 0
        self._tripped = False

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        if self._tripped:
            return True, b""
        cut = self._scan(data)
        if cut < 0:
            return self._parser.feed_data(data)
        if cut:
            self._parser.feed_data(data[:cut])
        self._tripped = True
        self._queue.set_exception(
            WebSocketError(WSCloseCode.MESSAGE_TOO_BIG, f"Frame size exceeds limit {self._limit}")
        )
        return True, b""

    def feed_eof(self) -> None:
        self._parser.feed_eof()

    def _scan(self, data: bytes) -> int:
        """Offset of the first oversized data frame's header in `data`, or -1."""
        header = self._header
        position, size = 0, len(data)
        while position < size:
            if self._skip:
                step = min(self._skip, size - position)
                self._skip -= step
                position += step
                continue
            frame_start = position - len(header)  # negative when the header began in an earlier chunk
            while len(header) < 2 or len(header) < _frame_header_length(header):
                if position >= size:
                    return -1
                target = 2 if len(header) < 2 else _frame_header_length(header)
                step = min(target - len(header), size - position)
                header += data[position : position + step]
                position += step
            length = header[1] & 0x7F
            if length == 126:
                length = int.from_bytes(header[2:4], "big")
            elif length == 127:
                length = int.from_bytes(header[2:10], "big")
            opcode = header[0] & 0x0F
            header.clear()
            if opcode <= 0x2 and length > self._limit:  # continuation, text, binary
                return max(frame_start, 0)
            self._skip = length
        return -1


def _frame_header_length(header: bytearray) -> int:
    second = header[1]
    length = second & 0x7F
    extended = 2 if length == 126 else 8 if length == 127 else 0
    return 2 + extended + (4 if second & 0x80 else 0)


class _GatewayWebSocket(web.WebSocketResponse):
    """A WebSocketResponse with API Gateway's per-frame size limit in front of its parser."""

    def __init__(self, *, max_frame_bytes: int | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._max_frame_bytes = max_frame_bytes

    def _post_start(self, request: BaseRequest, *args: Any, **kwargs: Any) -> None:
        protocol = request.protocol
        # Bytes that arrived with the upgrade request are fed to the parser inside
        # super(); the guard must see them too to stay in step with frame boundaries.
        tail = bytes(getattr(protocol, "_message_tail", b""))
        super()._post_start(request, *args, **kwargs)
        parser = getattr(protocol, "_payload_parser", None)
        queue = getattr(self, "_reader", None)
        if self._max_frame_bytes is None or parser is None or queue is None:
            if self._max_frame_bytes is not None:
                logger.warning("this aiohttp version hides its WebSocket parser: frame size limit not enforced")
            return
        guard = _FrameSizeGuard(parser, queue, self._max_frame_bytes)
        if tail and guard._scan(tail) >= 0:
            guard._tripped = True
            queue.set_exception(WebSocketError(WSCloseCode.MESSAGE_TOO_BIG, "Frame size exceeds limit"))
        protocol._payload_parser = guard


class _Connection:
    """Everything the gateway knows about one accepted (or being accepted) connection."""

    __slots__ = (
        "authorizer",
        "client_outcome",
        "close_intent",
        "closer",
        "connected_at",
        "connected_at_ms",
        "connected_mono",
        "connection_id",
        "domain_name",
        "done",
        "finished",
        "identity",
        "last_active",
        "last_active_mono",
        "pending",
        "source_ip",
        "timer",
        "transport",
        "ws",
    )

    def __init__(self, connection_id: str, source_ip: str, user_agent: str | None, domain_name: str) -> None:
        self.connection_id = connection_id
        self.source_ip = source_ip
        self.identity: dict[str, str] = {"sourceIp": source_ip}
        if user_agent is not None:
            self.identity["userAgent"] = user_agent
        self.domain_name = domain_name
        self.connected_at = time.time()
        self.connected_at_ms = int(self.connected_at * 1000)
        self.connected_mono = time.monotonic()
        self.last_active = self.connected_at
        self.last_active_mono = self.connected_mono
        self.authorizer: dict[str, Any] | None = None
        self.ws: _GatewayWebSocket | None = None
        self.transport: asyncio.Transport | None = None
        self.close_intent: tuple[int, str] | None = None  # set when the gateway decided to close
        self.client_outcome: tuple[int, str] | None = None  # how the client ended it
        self.closer: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.pending: set[asyncio.Task[None]] = set()
        self.done = asyncio.Event()
        self.finished = False


class LocalGateway:
    """An API Gateway WebSocket API stage with its Management API, served by one aiohttp app.

    `handlers` maps route keys (`$connect`, `$disconnect`, `$default`, actions)
    to `LambdaFunction`s or plain `handler(event, context)` callables; plain
    callables get a pool of their own (one per callable, shared by the routes
    it serves). `authorizer` is the `$connect` REQUEST authorizer; without one,
    no identity source is required.

    Extra HTTP surface: `root_handler` answers a plain GET of `/` (the WebSocket
    endpoint's path), `extra_routes` are added after the gateway's own routes
    (so a `web.static("/", ...)` catch-all does not shadow them), and `app` is
    the aiohttp application for anything else, until `start()` freezes it.
    """

    def __init__(
        self,
        config: GatewayConfig | None = None,
        handlers: Mapping[str, LambdaFunction | Handler] | None = None,
        authorizer: LambdaFunction | Handler | None = None,
        *,
        readiness_checks: Mapping[str, ReadinessCheck] | None = None,
        root_handler: HttpHandler | None = None,
        extra_routes: Iterable[web.AbstractRouteDef] = (),
        principals: Principals | None = None,
    ) -> None:
        self.config = config or GatewayConfig()
        # Who may call the Management API (SigV4 + execute-api:ManageConnections); default: the local admin only.
        self.principals = principals or Principals(self.config.account)
        self._owned: list[LambdaFunction] = []
        wrapped: dict[int, LambdaFunction] = {}
        self._routes: dict[str, LambdaFunction] = {
            key: self._as_function(key, handler, wrapped) for key, handler in (handlers or {}).items()
        }
        self._authorizer = None if authorizer is None else self._as_function("authorizer", authorizer, wrapped)
        self._message_routes = frozenset(key for key in self._routes if key not in _SPECIAL_ROUTES)
        self._identity_sources = tuple(_parse_identity_source(source) for source in self.config.identity_sources)
        self._route_field = _parse_route_selection(self.config.route_selection_expression)
        self._readiness_checks = dict(readiness_checks or {})
        self._root_handler = root_handler
        self._connections: dict[str, _Connection] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._management_limits = (self.config.management_rate_per_second, self.config.management_burst)
        self._management_bucket = _TokenBucket(*self._management_limits)
        # The last Management API calls and their answers, as API Gateway's execution logs would show them
        # (its access log cannot: a keep-alive connection opened while INFO was off is never logged).
        self.management_calls: deque[ManagementCall] = deque(maxlen=10_000)
        self._management_faults = _ManagementFaults(
            self.config.management_fault_rate, self.config.management_fault_seed
        )
        self._connect_bucket = (
            None
            if self.config.connect_rate_per_second is None
            else _TokenBucket(self.config.connect_rate_per_second, None)
        )
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._started_at = 0.0
        self._stopping = False
        self._app = self._build_app(extra_routes)

    # ------------------------------------------------------------ lifecycle

    @property
    def app(self) -> web.Application:
        return self._app

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the gateway is not started")
        return self._port

    @property
    def url(self) -> str:
        """The WebSocket endpoint clients connect to."""
        return f"ws://{self._url_host}:{self.port}/"

    @property
    def http_url(self) -> str:
        return f"http://{self._url_host}:{self.port}"

    @property
    def management_endpoint(self) -> str:
        """The Management API endpoint, shaped like AWS's `https://{domain}/{stage}`; the bare origin works too."""
        return f"{self.http_url}/{self.config.stage}"

    @property
    def connection_ids(self) -> list[str]:
        return list(self._connections)

    @property
    def functions(self) -> dict[str, LambdaFunction]:
        """Route key (and "authorizer") -> the function serving it."""
        functions = dict(self._routes)
        if self._authorizer is not None:
            functions["authorizer"] = self._authorizer
        return functions

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError("the gateway is already started")
        runner = web.AppRunner(
            self._app,
            access_log_class=_AccessLogger,
            access_log=access_logger,
            logger=_server_logger,
            # By the time the runner stops, `stop` has waited for every connection its budget allows: what
            # is still running is abandoned work, cancelled after this grace rather than the 60 s default.
            shutdown_timeout=STOP_HANDLER_GRACE_SECONDS,
        )
        await runner.setup()
        sock = _bind(self.config.host, self.config.port)
        self._port = sock.getsockname()[1]
        await web.SockSite(runner, sock).start()
        self._runner = runner
        self._started_at = time.monotonic()
        logger.info("local gateway listening on %s (management API %s)", self.url, self.management_endpoint)

    async def stop(self) -> None:
        """Close every connection (each gets its `$disconnect`), then stop serving."""
        if self._runner is None:
            self._release_functions()
            return
        if self._stopping:
            return
        self._stopping = True
        deadline = time.monotonic() + self.config.stop_disconnect_seconds
        connections = list(self._connections.values())
        for connection in connections:
            self._request_close(connection, WSCloseCode.GOING_AWAY, GOING_AWAY)
        waits = [asyncio.ensure_future(connection.done.wait()) for connection in connections]
        if waits:
            budget = self.config.stop_disconnect_seconds
            _, pending = await asyncio.wait(waits, timeout=budget)
            for wait in waits:
                wait.cancel()
            if pending:
                logger.warning(
                    "stopping: $disconnect finished for %d of %d connections within %g s; the rest are abandoned",
                    len(waits) - len(pending),
                    len(waits),
                    budget,
                )
            else:
                logger.info("stopping: %d connections closed, each with its $disconnect", len(waits))
        await self._runner.cleanup()
        if self._background:
            await asyncio.wait(set(self._background), timeout=max(0.1, deadline - time.monotonic()))
        self._release_functions()
        self._runner = None
        self._stopping = False  # a stopped gateway can be started again (a gateway restart)
        logger.info("local gateway stopped")

    def _release_functions(self) -> None:
        for function in self._owned:
            function.shutdown(wait=False)
        self._owned.clear()

    async def __aenter__(self) -> LocalGateway:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # ------------------------------------------------------------ injected Management API faults

    def add_management_fault(
        self,
        kind: str,
        *,
        connections: Iterable[str] | None = None,
        methods: Iterable[str] = (hdrs.METH_POST,),
        caller: str | None = None,
        count: int | None = None,
        delay: float = 0.0,
    ) -> ManagementFault:
        """From now on, answer matching Management API calls with a fault (see `ManagementFault`); the rule."""
        rule = ManagementFault(
            kind,
            connections=None if connections is None else frozenset(connections),
            methods=frozenset(methods),
            caller=caller,
            count=count,
            delay=delay,
        )
        return self._management_faults.add(rule)

    def remove_management_fault(self, rule: ManagementFault) -> None:
        self._management_faults.remove(rule)

    @contextlib.contextmanager
    def management_fault(self, kind: str, **options: Any) -> Iterator[ManagementFault]:
        """`add_management_fault` for the duration of a `with` block."""
        rule = self.add_management_fault(kind, **options)
        try:
            yield rule
        finally:
            self.remove_management_fault(rule)

    @property
    def management_faults(self) -> list[ManagementFault]:
        return list(self._management_faults.rules)

    def configure_management_faults(self, rate: float, seed: int | None = None) -> None:
        """Answer this share of all Management API calls with 429 or 500 from now on (0: none); counters restart."""
        self._management_faults.configure(rate, seed)

    def management_fault_counts(self) -> dict[str, int]:
        """What was injected so far: error type (or "delayed") -> calls."""
        return dict(self._management_faults.counts)

    # ------------------------------------------------------------ WebSocket: handshake

    async def _handle_root(self, request: web.Request) -> StreamResponse:
        if request.headers.get(hdrs.UPGRADE, "").lower() != "websocket":
            if self._root_handler is not None:
                return await self._root_handler(request)
            return web.Response(status=426, text="Upgrade Required", headers={hdrs.UPGRADE: "websocket"})
        return await self._serve_websocket(request)

    async def _serve_websocket(self, request: web.Request) -> StreamResponse:
        if self._stopping:
            return _Refusal(503, "Service Unavailable").response()
        if not web.WebSocketResponse().can_prepare(request):
            return _Refusal(400, "Bad Request").response()
        if self._connect_bucket is not None and not self._connect_bucket.take():
            return _Refusal(429, "Limit Exceeded", "LimitExceededException").response()
        connection = _Connection(
            _new_id(),
            request.remote or "127.0.0.1",
            request.headers.get(hdrs.USER_AGENT),
            self.config.domain_name or request.host,
        )
        request_id = _new_id()
        trace_id = f"Root=1-{int(connection.connected_at):08x}-{os.urandom(12).hex()}"
        try:
            if self._authorizer is not None:
                connection.authorizer = await self._authorize(request, connection, request_id, trace_id)
            response_headers = await self._invoke_connect(request, connection, request_id, trace_id)
        except _Refusal as refusal:
            self._log_route(connection, "CONNECT", "$connect", refusal.status, request_id)
            return refusal.response()

        protocol = _header(response_headers, "Sec-WebSocket-Protocol")
        ws = _GatewayWebSocket(
            max_frame_bytes=self.config.max_frame_bytes,
            protocols=(protocol,) if protocol else (),
            compress=False,  # API Gateway negotiates no permessage-deflate
            max_msg_size=self.config.max_message_bytes + 1,  # aiohttp rejects sizes >= its limit
            timeout=self.config.close_timeout,
            autoclose=True,
            autoping=True,
            writer_limit=_NO_WRITE_BACKPRESSURE,
        )
        try:
            await ws.prepare(request)
        except Exception:
            # $connect succeeded, so the integration holds state for this id: it still gets its $disconnect.
            await self._finish(connection, (WSCloseCode.ABNORMAL_CLOSURE, ABNORMAL_REASON))
            raise
        connection.ws = ws
        connection.transport = request.transport
        self._connections[connection.connection_id] = connection
        self._log_route(connection, "CONNECT", "$connect", 200, request_id)
        if self._stopping:
            self._request_close(connection, WSCloseCode.GOING_AWAY, GOING_AWAY)
        else:
            self._arm_timer(connection)
        try:
            await self._receive(connection, ws)
        finally:
            outcome = connection.close_intent or connection.client_outcome
            finishing = asyncio.ensure_future(
                self._finish(connection, outcome or (WSCloseCode.ABNORMAL_CLOSURE, ABNORMAL_REASON))
            )
            self._background.add(finishing)
            finishing.add_done_callback(self._background.discard)
            # Shielded: a handler cancelled by server shutdown must still deliver its $disconnect.
            await asyncio.shield(finishing)
        return ws

    async def _authorize(
        self, request: web.Request, connection: _Connection, request_id: str, trace_id: str
    ) -> dict[str, Any]:
        assert self._authorizer is not None
        for kind, name in self._identity_sources:
            value = request.query.get(name) if kind == "querystring" else request.headers.get(name)
            if not value:
                raise _Refusal(401, "Unauthorized", "UnauthorizedException")
        method_arn = (
            f"arn:aws:execute-api:{self.config.region}:{self.config.account}:"
            f"{self.config.api_id}/{self.config.stage}/$connect"
        )
        headers, multi_headers = self._event_headers(request, trace_id, keep_hop_by_hop=True)
        event: dict[str, Any] = {
            "type": "REQUEST",
            "methodArn": method_arn,
            "headers": headers,
            "multiValueHeaders": multi_headers,
            **_query_parameters(request, always=True),
            "stageVariables": {},
            "requestContext": self._request_context(connection, "$connect", "CONNECT", request_id, time.time()),
        }
        started = time.monotonic()
        try:
            answer = await self._authorizer.invoke(event)
        except Exception as exc:
            if str(exc) == "Unauthorized":
                raise _Refusal(401, "Unauthorized", "UnauthorizedException") from exc
            logger.error("authorizer failed: %s: %s", type(exc).__name__, exc)
            raise _Refusal(500, None, "AuthorizerConfigurationException") from exc
        latency_ms = int((time.monotonic() - started) * 1000)
        try:
            principal, allowed, context = _evaluate_authorizer_answer(answer, method_arn)
        except _AuthorizerConfigurationError as exc:
            logger.error("authorizer answer unusable: %s", exc)
            raise _Refusal(500, None, "AuthorizerConfigurationException") from exc
        if not allowed:
            raise _Refusal(403, "Forbidden", "AccessDeniedException")
        return {**context, "principalId": principal, "integrationLatency": latency_ms}

    async def _invoke_connect(
        self, request: web.Request, connection: _Connection, request_id: str, trace_id: str
    ) -> Mapping[str, str]:
        function = self._routes.get("$connect")
        if function is None:
            return _EMPTY_HEADERS
        headers, multi_headers = self._event_headers(request, trace_id, keep_hop_by_hop=False)
        context = self._request_context(connection, "$connect", "CONNECT", request_id, time.time())
        if connection.authorizer is not None:
            context["authorizer"] = dict(connection.authorizer)
        event = {
            "headers": headers,
            "multiValueHeaders": multi_headers,
            **_query_parameters(request, always=False),
            "requestContext": context,
            "isBase64Encoded": False,
        }
        try:
            result = await function.invoke(event)
        except Exception:
            logger.exception("$connect failed for %s", connection.connection_id)
            raise _Refusal(500, "Internal server error") from None
        status = _status_of(result)
        if 200 <= status < 300:
            result_headers = result.get("headers") if isinstance(result, dict) else None
            return result_headers if isinstance(result_headers, dict) else _EMPTY_HEADERS
        if not 400 <= status < 600:
            raise _Refusal(500, "Internal server error")
        body = result.get("body") if isinstance(result, dict) else None
        message = "Internal server error" if status >= 500 else "Forbidden"
        raise _Refusal(status, message, body=body if isinstance(body, str) else None)

    # ------------------------------------------------------------ WebSocket: connected

    async def _receive(self, connection: _Connection, ws: _GatewayWebSocket) -> None:
        while True:
            message = await ws.receive()
            kind = message.type
            if kind is WSMsgType.TEXT:
                self._touch(connection)
                self._dispatch(connection, message.data, is_base64=False)
            elif kind is WSMsgType.BINARY:
                self._touch(connection)
                self._dispatch(connection, base64.b64encode(message.data).decode("ascii"), is_base64=True)
            elif kind is WSMsgType.CLOSE:
                code = message.data
                connection.client_outcome = (code, message.extra or "") if code else (1005, NO_STATUS_REASON)
                return
            elif kind is WSMsgType.ERROR:
                error = message.data
                if isinstance(error, WebSocketError):
                    reason = MESSAGE_TOO_BIG_REASON if error.code == WSCloseCode.MESSAGE_TOO_BIG else str(error)
                    connection.client_outcome = (int(error.code), reason)
                return
            else:  # CLOSING (the gateway is closing it) or CLOSED (the socket is gone)
                return

    def _touch(self, connection: _Connection) -> None:
        connection.last_active = time.time()
        connection.last_active_mono = time.monotonic()

    def _dispatch(self, connection: _Connection, body: str, *, is_base64: bool) -> None:
        # The route selection expression cannot look into a binary body: binary frames go to $default.
        route_key = "$default" if is_base64 else self._select_route(body)
        function = self._routes.get(route_key)
        request_id = _new_id()
        if function is None:
            self._log_route(connection, "MESSAGE", route_key, 403, request_id)
            self._spawn(connection, self._send_error(connection, "Forbidden", request_id))
            return
        context = self._request_context(connection, route_key, "MESSAGE", request_id, time.time())
        context["messageId"] = _new_id()
        if connection.authorizer is not None:
            context["authorizer"] = dict(connection.authorizer)
        event = {"requestContext": context, "body": body, "isBase64Encoded": is_base64}
        # Tasks start in creation order, so invocations reach the pool in arrival order.
        self._spawn(connection, self._run_route(connection, route_key, function, event, request_id))

    def _select_route(self, body: str) -> str:
        if not self._message_routes:
            return "$default"
        try:
            parsed = json.loads(body)
        except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser recurses
            return "$default"
        if isinstance(parsed, dict):
            action = parsed.get(self._route_field)
            if isinstance(action, str) and action in self._message_routes:
                return action
        return "$default"

    def _spawn(self, connection: _Connection, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        connection.pending.add(task)
        task.add_done_callback(connection.pending.discard)

    async def _run_route(
        self, connection: _Connection, route_key: str, function: LambdaFunction, event: dict[str, Any], request_id: str
    ) -> None:
        started = time.monotonic()
        try:
            result = await function.invoke(event)
        except Exception as exc:
            logger.error("route %s failed for %s: %s: %s", route_key, connection.connection_id, type(exc).__name__, exc)
            self._log_route(connection, "MESSAGE", route_key, 500, request_id, started)
            await self._send_error(connection, "Internal server error", request_id)
            return
        self._log_route(connection, "MESSAGE", route_key, _status_of(result), request_id, started)
        if route_key in self.config.two_way_routes:
            body = result.get("body") if isinstance(result, dict) else result
            if body is not None:
                await self._send_text(connection, body if isinstance(body, str) else json.dumps(body))

    async def _send_error(self, connection: _Connection, message: str, request_id: str) -> None:
        # What API Gateway tells the client when an integration fails or no route matches.
        await self._send_text(
            connection,
            json.dumps({"message": message, "connectionId": connection.connection_id, "requestId": request_id}),
        )

    async def _send_text(self, connection: _Connection, text: str) -> None:
        ws = connection.ws
        if ws is None or connection.finished or connection.close_intent is not None:
            return
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.send_str(text)

    # ------------------------------------------------------------ WebSocket: closing

    def _arm_timer(self, connection: _Connection) -> None:
        deadline = min(
            connection.last_active_mono + self.config.idle_timeout,
            connection.connected_mono + self.config.max_connection_seconds,
        )
        loop = asyncio.get_running_loop()
        # loop.time() is time.monotonic(), so monotonic deadlines convert directly.
        connection.timer = loop.call_at(deadline, self._on_timer, connection)

    def _on_timer(self, connection: _Connection) -> None:
        connection.timer = None
        if connection.finished or connection.close_intent is not None:
            return
        now = time.monotonic()
        if (
            now >= connection.connected_mono + self.config.max_connection_seconds
            or now >= connection.last_active_mono + self.config.idle_timeout
        ):
            self._request_close(connection, WSCloseCode.GOING_AWAY, GOING_AWAY)
        else:
            self._arm_timer(connection)

    def _request_close(self, connection: _Connection, code: int, reason: str) -> None:
        if connection.close_intent is not None or connection.finished or connection.ws is None:
            return
        connection.close_intent = (int(code), reason)
        connection.closer = asyncio.ensure_future(_close_quietly(connection.ws, code, reason))

    async def _finish(self, connection: _Connection, outcome: tuple[int, str]) -> None:
        """Forget the connection and invoke `$disconnect`: exactly once, whatever ended it."""
        if connection.finished:
            return
        connection.finished = True
        if self._connections.get(connection.connection_id) is connection:
            del self._connections[connection.connection_id]
        if connection.timer is not None:
            connection.timer.cancel()
            connection.timer = None
        if connection.closer is not None:
            await connection.closer
        elif connection.ws is not None and not connection.ws.closed:
            await _close_quietly(connection.ws, WSCloseCode.GOING_AWAY, GOING_AWAY)
        try:
            await self._invoke_disconnect(connection, outcome)
        finally:
            connection.done.set()

    async def _invoke_disconnect(self, connection: _Connection, outcome: tuple[int, str]) -> None:
        function = self._routes.get("$disconnect")
        if function is None:
            return
        code, reason = outcome
        request_id = _new_id()
        context = self._request_context(connection, "$disconnect", "DISCONNECT", request_id, time.time())
        context["disconnectStatusCode"] = code
        context["disconnectReason"] = reason
        if connection.authorizer is not None:
            context["authorizer"] = dict(connection.authorizer)
        host = connection.domain_name
        headers = {"Host": host, "x-api-key": "", "X-Forwarded-For": "", "x-restapi": ""}
        event = {
            "headers": headers,
            "multiValueHeaders": {key: [value] for key, value in headers.items()},
            "requestContext": context,
            "isBase64Encoded": False,
        }
        started = time.monotonic()
        try:
            result = await function.invoke(event)
        except LambdaShutdownError:
            # The stack is stopping and this one missed the stop's budget (counted in the stop's log line).
            status = 500
        except Exception:
            logger.exception("$disconnect failed for %s", connection.connection_id)
            status = 500
        else:
            status = _status_of(result)
        self._log_route(connection, "DISCONNECT", "$disconnect", status, request_id, started)

    # ------------------------------------------------------------ Management API

    async def _handle_management(self, request: web.Request) -> web.Response:
        response = await self._serve_management(request)
        self.management_calls.append(
            ManagementCall(request.method, request.match_info["connection_id"], response.status)
        )
        return response

    async def _serve_management(self, request: web.Request) -> web.Response:
        limit = self.config.max_message_bytes
        if request.content_length is not None and request.content_length > limit:
            return _management_error(413, "PayloadTooLargeException", "Request entity too large")
        try:
            data = await request.read()  # the signature covers the body
        except web.HTTPRequestEntityTooLarge:
            return _management_error(413, "PayloadTooLargeException", "Request entity too large")
        try:
            principal = authenticate(request, data, self.principals, region=self.config.region)
        except SignatureError as error:
            return signature_refusal(error)
        stage = request.match_info.get("stage")
        if stage is not None and stage != self.config.stage:
            return _management_error(403, "ForbiddenException", "Forbidden")
        connection_id = request.match_info["connection_id"]
        resource = (
            f"arn:aws:execute-api:{self.config.region}:{self.config.account}:{self.config.api_id}/"
            f"{self.config.stage}/{request.method}/@connections/{connection_id}"
        )
        action = "execute-api:ManageConnections"
        decision = principal.decide(action, resource, request_context(request, self.config.region, principal))
        if decision is not Decision.ALLOW:
            return access_denied(principal, action, resource, decision)
        limits = (self.config.management_rate_per_second, self.config.management_burst)
        if limits != self._management_limits:
            # The config was replaced (LocalStack.gateway_limits): throttle at the new rate from now on.
            self._management_limits = limits
            self._management_bucket = _TokenBucket(*limits)
        fault = self._management_faults.pick(request.method, connection_id, principal.name)
        if isinstance(fault, tuple):
            return _management_error(*fault)
        if fault is not None:
            if fault.kind != "delay":
                return _management_error(*_answer_of(fault.kind))
            await asyncio.sleep(fault.delay)
            if request.transport is None or request.transport.is_closing():
                # The caller gave up (its timeout) or died meanwhile: the call is not carried out.
                fault.dropped += 1
                return _management_error(*_INTERNAL)
        if not self._management_bucket.take():
            return _management_error(*_THROTTLED)
        method = request.method
        if method == hdrs.METH_POST:
            return await self._post(connection_id, data)
        if method == hdrs.METH_GET:
            return self._get(connection_id)
        if method == hdrs.METH_DELETE:
            return self._delete(connection_id)
        return _management_error(405, "MethodNotAllowedException", "Method Not Allowed")

    async def _post(self, connection_id: str, data: bytes) -> web.Response:
        if len(data) > self.config.max_message_bytes:
            return _management_error(413, "PayloadTooLargeException", "Request entity too large")
        connection = self._connections.get(connection_id)
        if connection is None or connection.close_intent is not None:
            return _gone()
        transport = connection.transport
        ws = connection.ws
        if transport is None or ws is None or transport.is_closing():
            return _gone()
        if transport.get_write_buffer_size() > self.config.client_buffer_bytes:
            return _management_error(429, "LimitExceededException", "Client side buffer is full")
        try:
            # API Gateway delivers posted data as one text frame, byte for byte.
            await ws.send_frame(data, WSMsgType.TEXT)
        except (ConnectionError, RuntimeError):
            return _gone()
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("POST @connections/%s %d bytes", connection_id, len(data))
        return web.Response(status=200)

    def _get(self, connection_id: str) -> web.Response:
        connection = self._connections.get(connection_id)
        if connection is None or connection.close_intent is not None:
            return _gone()
        info = {
            "connectedAt": _iso(connection.connected_at),
            "identity": {
                "sourceIp": connection.source_ip,
                "userAgent": connection.identity.get("userAgent", ""),
            },
            "lastActiveAt": _iso(connection.last_active),
        }
        return web.Response(status=200, body=json.dumps(info), content_type=_JSON)

    def _delete(self, connection_id: str) -> web.Response:
        connection = self._connections.get(connection_id)
        if connection is None or connection.close_intent is not None:
            return _gone()
        self._request_close(connection, WSCloseCode.OK, "")
        return web.Response(status=204)

    # ------------------------------------------------------------ health

    async def _handle_health(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "status": "ok",
                "connections": len(self._connections),
                "uptime_seconds": round(time.monotonic() - self._started_at, 3),
                "stage": self.config.stage,
            }
        )

    async def _handle_ready(self, request: web.Request) -> web.Response:
        names = list(self._readiness_checks)
        results = await asyncio.gather(*(self._run_check(self._readiness_checks[name]) for name in names))
        checks = dict(zip(names, results, strict=True))
        failing = [name for name, result in checks.items() if result != "ok"]
        if failing:
            return web.json_response({"status": "not ready", "failing": failing, "checks": checks}, status=503)
        return web.json_response({"status": "ready", "checks": checks})

    async def _run_check(self, check: ReadinessCheck) -> str:
        try:
            healthy = await asyncio.wait_for(check(), timeout=self.config.ready_check_timeout)
        except TimeoutError:
            return f"timed out after {self.config.ready_check_timeout:g}s"
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        return "ok" if healthy else "unhealthy"

    # ------------------------------------------------------------ plumbing

    def _build_app(self, extra_routes: Iterable[web.AbstractRouteDef]) -> web.Application:
        # Bodies bigger than a message are refused by the Management API itself (413 with
        # API Gateway's error shape); this only bounds what aiohttp will buffer.
        app = web.Application(client_max_size=max(1024 * 1024, self.config.max_message_bytes + 1))
        app.router.add_get("/", self._handle_root)
        app.router.add_get("/health", self._handle_health)
        app.router.add_get("/ready", self._handle_ready)
        app.router.add_route("*", "/@connections/{connection_id}", self._handle_management)
        app.router.add_route("*", "/{stage}/@connections/{connection_id}", self._handle_management)
        app.router.add_routes(list(extra_routes))
        return app

    def _as_function(
        self, route_key: str, handler: LambdaFunction | Handler, wrapped: dict[int, LambdaFunction]
    ) -> LambdaFunction:
        if isinstance(handler, LambdaFunction):
            return handler
        function = wrapped.get(id(handler))
        if function is None:
            name = getattr(handler, "__name__", route_key.lstrip("$"))
            function = LambdaFunction(
                name,
                handler,
                timeout_seconds=self.config.default_timeout_seconds,
                concurrency=self.config.pool_sizes.get(name, self.config.default_pool_size),
                region=self.config.region,
                account=self.config.account,
            )
            wrapped[id(handler)] = function
            self._owned.append(function)
        return function

    def _request_context(
        self, connection: _Connection, route_key: str, event_type: str, request_id: str, now: float
    ) -> dict[str, Any]:
        return {
            "routeKey": route_key,
            "eventType": event_type,
            "extendedRequestId": request_id,
            "requestTime": _request_time(now),
            "messageDirection": "IN",
            "stage": self.config.stage,
            "connectedAt": connection.connected_at_ms,
            "requestTimeEpoch": int(now * 1000),
            "identity": dict(connection.identity),
            "requestId": request_id,
            "domainName": connection.domain_name,
            "connectionId": connection.connection_id,
            "apiId": self.config.api_id,
        }

    def _event_headers(
        self, request: web.Request, trace_id: str, *, keep_hop_by_hop: bool
    ) -> tuple[dict[str, str], dict[str, list[str]]]:
        single: dict[str, str] = {}
        multi: dict[str, list[str]] = {}
        for key, value in request.headers.items():
            if not keep_hop_by_hop and key.lower() in ("connection", "upgrade"):
                continue
            single[key] = value
            multi.setdefault(key, []).append(value)
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        added = {
            "X-Amzn-Trace-Id": trace_id,
            "X-Forwarded-For": request.remote or "127.0.0.1",
            "X-Forwarded-Port": str(sockname[1] if sockname else self.config.port),
            "X-Forwarded-Proto": request.scheme,
        }
        for key, value in added.items():
            single[key] = value
            multi[key] = [value]
        return single, multi

    def _log_route(
        self,
        connection: _Connection,
        event_type: str,
        route_key: str,
        status: int,
        request_id: str,
        started: float | None = None,
    ) -> None:
        # API Gateway's CLF access log format for WebSocket APIs, plus the integration latency.
        if not access_logger.isEnabledFor(logging.INFO):
            return
        latency = f" {(time.monotonic() - started) * 1000:.1f}ms" if started is not None else ""
        access_logger.info(
            '%s - - [%s] "%s %s %s" %d %s%s',
            connection.source_ip,
            _request_time(time.time()),
            event_type,
            route_key,
            connection.connection_id,
            status,
            request_id,
            latency,
        )

    @property
    def _url_host(self) -> str:
        host = self.config.host
        if host in ("0.0.0.0", ""):
            return "127.0.0.1"
        if host == "::":
            return "[::1]"
        return f"[{host}]" if ":" in host else host


# ---------------------------------------------------------------- helpers


class _AccessLogger(AbstractAccessLogger):
    """HTTP access log without secrets: `token` query values never reach the log.

    Management API calls are logged at DEBUG only: AWS does not access-log them,
    and at thousands of posts a second the log would cost more than the posts.
    """

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)

    def log(self, request: BaseRequest, response: StreamResponse, time_taken: float) -> None:
        path = request.path
        level = logging.DEBUG if "/@connections/" in path else logging.INFO
        if not self.logger.isEnabledFor(level):
            return
        query = request.query_string
        target = f"{path}?{redact_query(query)}" if query else path
        self.logger.log(
            level,
            '%s - - [%s] "%s %s" %d %s %.1fms',
            request.remote,
            _request_time(time.time()),
            request.method,
            target,
            response.status,
            response.body_length,
            time_taken * 1000,
        )


_SECRET_NAMES = frozenset({"token", "access_token", "id_token"})
# In free text (an exception naming the request line): a token parameter, its name possibly percent-encoded.
_SECRET_IN_TEXT = re.compile(r"(?i)((?:access_|id_)?t(?:o|%6f)(?:k|%6b)(?:e|%65)(?:n|%6e)(?:=|%3d))[^&\s'\"\\]*")


def redact_query(query_string: str) -> str:
    """The query string with the value of every token parameter replaced.

    Names are compared decoded, as the authorizer reads them (`tok%65n=` is `token=`)."""
    parts = []
    for pair in query_string.split("&"):
        name, separator, _ = pair.partition("=")
        if separator and unquote_plus(name).lower() in _SECRET_NAMES:
            pair = f"{name}=REDACTED"
        parts.append(pair)
    return "&".join(parts)


class _WithoutSecrets(logging.Filter):
    """For aiohttp's server log: a request it could not parse (an over-long or malformed request line) is logged
    by its exception, whose text starts with the request line and so with any token in it. Only the exception's
    type is kept, and token values in the message are replaced."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = _SECRET_IN_TEXT.sub(r"\1REDACTED", record.getMessage())
        if record.exc_info and record.exc_info[1] is not None:
            message = f"{message}: {type(record.exc_info[1]).__name__} (details withheld: they may carry a token)"
            record.exc_info = None
            record.exc_text = None
        record.msg, record.args = message, ()
        return True


_server_logger = logging.getLogger("quanttrade.local.gateway.server")
_server_logger.addFilter(_WithoutSecrets())


def _new_id() -> str:
    # API Gateway's ids: 11 random bytes in URL-safe base64, 16 characters ending in '='.
    return base64.urlsafe_b64encode(os.urandom(11)).decode("ascii")


def _request_time(epoch: float) -> str:
    t = time.gmtime(epoch)
    return f"{t.tm_mday:02d}/{_MONTHS[t.tm_mon - 1]}/{t.tm_year}:{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000"


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _status_of(result: Any) -> int:
    if isinstance(result, dict):
        try:
            return int(result.get("statusCode", 200))
        except (TypeError, ValueError):
            return 500
    return 200


def _header(headers: Mapping[str, str], name: str) -> str | None:
    lowered = name.lower()
    for key, value in headers.items():
        if key.lower() == lowered:
            return str(value)
    return None


def _query_parameters(request: web.Request, *, always: bool) -> dict[str, Any]:
    query = request.query
    if not query and not always:
        return {}
    single: dict[str, str] = {}
    multi: dict[str, list[str]] = {}
    for key, value in query.items():
        single[key] = value
        multi.setdefault(key, []).append(value)
    return {"queryStringParameters": single, "multiValueQueryStringParameters": multi}


def _parse_route_selection(expression: str) -> str:
    """The body field a `$request.body.<field>` route selection expression names."""
    prefix = "$request.body."
    field_name = expression.removeprefix(prefix)
    if not expression.startswith(prefix) or not field_name.isidentifier():
        raise ValueError(f"route selection expression {expression!r}: only $request.body.<field> is supported here")
    return field_name


def _parse_identity_source(source: str) -> tuple[str, str]:
    parts = source.split(".", 3)
    if len(parts) != 4 or parts[:2] != ["route", "request"] or parts[2] not in ("querystring", "header"):
        raise ValueError(f"unsupported identity source {source!r}: use route.request.querystring.X or header.X")
    return parts[2], parts[3]


def _evaluate_authorizer_answer(answer: Any, method_arn: str) -> tuple[str, bool, dict[str, str]]:
    """(principalId, allowed, stringified context) from an IAM-policy authorizer answer."""
    if not isinstance(answer, dict):
        raise _AuthorizerConfigurationError("the answer is not an object")
    principal = answer.get("principalId")
    document = answer.get("policyDocument")
    if not isinstance(principal, str | int) or not isinstance(document, dict):
        raise _AuthorizerConfigurationError("principalId and policyDocument are required")
    statements = document.get("Statement")
    if isinstance(statements, dict):
        statements = [statements]
    if not isinstance(statements, list):
        raise _AuthorizerConfigurationError("policyDocument.Statement is missing")
    allowed = False
    for statement in statements:
        if not isinstance(statement, dict):
            raise _AuthorizerConfigurationError("a policy statement is not an object")
        actions = _as_list(statement.get("Action"))
        resources = _as_list(statement.get("Resource"))
        if not any(_glob(action.lower(), "execute-api:invoke") for action in actions):
            continue
        if not any(_glob(resource, method_arn) for resource in resources):
            continue
        effect = statement.get("Effect")
        if effect == "Deny":
            return str(principal), False, {}
        if effect == "Allow":
            allowed = True
    context = answer.get("context") or {}
    if not isinstance(context, dict):
        raise _AuthorizerConfigurationError("context is not an object")
    strings: dict[str, str] = {}
    for key, value in context.items():
        if isinstance(value, bool):
            strings[key] = "true" if value else "false"
        elif isinstance(value, str):
            strings[key] = value
        elif isinstance(value, int | float):
            strings[key] = json.dumps(value)
        else:
            raise _AuthorizerConfigurationError(f"context value {key!r} is not a string, number or boolean")
    return str(principal), allowed, strings


def _as_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [item for item in value if isinstance(item, str)]
    return []


def _glob(pattern: str, value: str) -> bool:
    if "*" not in pattern and "?" not in pattern:
        return pattern == value
    expression = re.escape(pattern).replace(r"\*", ".*").replace(r"\?", ".")
    return re.fullmatch(expression, value, flags=re.DOTALL) is not None


def _management_error(status: int, error_type: str, message: str | None) -> web.Response:
    # botocore takes the error code from x-amzn-ErrorType, so `client.exceptions.<Type>` is raised.
    return web.Response(
        status=status,
        body=json.dumps({"message": message}),
        content_type=_JSON,
        headers={"x-amzn-ErrorType": error_type, "x-amzn-RequestId": _new_id()},
    )


def _gone() -> web.Response:
    return _management_error(410, "GoneException", None)


async def _close_quietly(ws: web.WebSocketResponse, code: int, reason: str) -> None:
    with contextlib.suppress(Exception):
        await ws.close(code=code, message=reason.encode())


def _bind(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    # A restarted local stack must get its port back at once, not after TIME_WAIT.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    sock.setblocking(False)
    return sock
