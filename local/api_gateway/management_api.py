"""The Management API: `POST|GET|DELETE @connections/{id}`, as boto3's `apigatewaymanagementapi` calls it.

Every call is signed (SigV4) and authorised (`execute-api:ManageConnections`
on the connection's ARN) against the principals the stage knows, throttled at
the account's rate, and answered with API Gateway's error shapes; injected
faults (`management_faults`) come before the throttle.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import NamedTuple

from aiohttp import WSCloseCode, hdrs, web

from local.api_gateway.config import GatewayConfig
from local.api_gateway.connection import Connection
from local.api_gateway.error_responses import JSON, gone, management_error
from local.api_gateway.management_faults import INTERNAL_ERROR, THROTTLED, ManagementFaults, answer_of
from local.api_gateway.throttle import TokenBucket
from local.api_gateway.turn_writes import TurnWrites
from local.iam import Decision
from local.principals import Principal, Principals
from local.signed_http import access_denied, authenticate_parts, request_context, signature_refusal
from local.sigv4 import SignatureError

logger = logging.getLogger("quanttrade.local.gateway")

RECORDED_CALLS = 10_000  # how many of the last Management API calls `ManagementApi.calls` keeps
MANAGE_CONNECTIONS = "execute-api:ManageConnections"  # the IAM action of every Management API call
DECISIONS_KEPT = 20_000  # IAM decisions remembered per (caller, connection, source address); see `_decide`

CloseConnection = Callable[[Connection, int, str], None]


class ManagementCall(NamedTuple):
    method: str
    connection_id: str
    status: int


class ManagementRequest(NamedTuple):
    """One Management API call as received, from aiohttp's route or from the fast path."""

    method: str
    raw_path: str  # the target as sent, still percent-encoded: what SigV4 signed
    headers: Iterable[tuple[str, str]]  # every header received, repeats included
    body: bytes
    stage: str | None  # the path's stage segment; None for the bare `/@connections/{id}`
    connection_id: str  # decoded
    remote: str | None  # the caller's address
    transport: asyncio.BaseTransport | None  # the caller's connection: whether it is still there


class ManagementApi:
    """Serves the Management API for the stage's open `connections`; `close` ends one (`DELETE`)."""

    def __init__(
        self,
        config: GatewayConfig,
        principals: Principals,
        connections: Mapping[str, Connection],
        close: CloseConnection,
        writes: TurnWrites,
    ) -> None:
        # Who may call it (SigV4 + execute-api:ManageConnections).
        self.principals = principals
        self._connections = connections
        self._close = close
        self._writes = writes  # posted frames go out with the turn's other writes
        # The last calls and their answers, as API Gateway's execution logs would show them (its access
        # log cannot: a keep-alive connection opened while INFO was off is never logged). Bounded: the
        # stack runs for hours at thousands of posts a second.
        self.calls: deque[ManagementCall] = deque(maxlen=RECORDED_CALLS)
        self.faults = ManagementFaults(config.management_fault_rate, config.management_fault_seed)
        self._config = config
        self._limits = _limits_of(config)
        self._bucket = TokenBucket(*self._limits)
        self._decisions: dict[tuple[int, str, str], tuple[Principal, Decision]] = {}

    @property
    def config(self) -> GatewayConfig:
        return self._config

    @config.setter
    def config(self, config: GatewayConfig) -> None:
        limits = _limits_of(config)
        if limits != self._limits:
            # A new config (LocalStack.gateway_limits) throttles at its rate from now on.
            self._limits = limits
            self._bucket = TokenBucket(*limits)
        self._config = config

    async def handle(self, request: web.Request) -> web.Response:
        """The aiohttp route's handler (see `management_fast_path` for the requests that never reach it)."""
        method, connection_id = request.method, request.match_info["connection_id"]
        limit = self._config.max_message_bytes
        if request.content_length is not None and request.content_length > limit:
            return self._record(method, connection_id, _too_large())
        try:
            data = await request.read()  # the signature covers the body
        except web.HTTPRequestEntityTooLarge:
            return self._record(method, connection_id, _too_large())
        call = ManagementRequest(
            method,
            request.raw_path,
            request.headers.items(),
            data,
            request.match_info.get("stage"),
            connection_id,
            request.remote,
            request.transport,
        )
        return await self.answer(call)

    async def answer(self, call: ManagementRequest) -> web.Response:
        """The answer to one call, recorded in `calls`, whichever server received it."""
        return self._record(call.method, call.connection_id, await self._serve(call))

    def _record(self, method: str, connection_id: str, response: web.Response) -> web.Response:
        self.calls.append(ManagementCall(method, connection_id, response.status))
        return response

    async def _serve(self, call: ManagementRequest) -> web.Response:
        config = self._config
        data = call.body
        try:
            principal = authenticate_parts(
                call.method, call.raw_path, call.headers, data, self.principals, region=config.region
            )
        except SignatureError as error:
            return signature_refusal(error)
        if call.stage is not None and call.stage != config.stage:
            return management_error(403, "ForbiddenException", "Forbidden")
        connection_id = call.connection_id
        method = call.method
        resource = (
            f"arn:aws:execute-api:{config.region}:{config.account}:{config.api_id}/"
            f"{config.stage}/{method}/@connections/{connection_id}"
        )
        decision = self._decide(principal, resource, call.remote)
        if decision is not Decision.ALLOW:
            return access_denied(principal, MANAGE_CONNECTIONS, resource, decision)
        fault = self.faults.pick(method, connection_id, principal.name)
        if isinstance(fault, tuple):
            return management_error(*fault)
        if fault is not None:
            if fault.kind != "delay":
                return management_error(*answer_of(fault.kind))
            await asyncio.sleep(fault.delay)
            if call.transport is None or call.transport.is_closing():
                # The caller gave up (its timeout) or died meanwhile: the call is not carried out.
                fault.dropped += 1
                return management_error(*INTERNAL_ERROR)
        if not self._bucket.take():
            return management_error(*THROTTLED)
        if method == hdrs.METH_POST:
            return self._post(connection_id, data)
        if method == hdrs.METH_GET:
            return self._get(connection_id)
        if method == hdrs.METH_DELETE:
            return self._delete(connection_id)
        return management_error(405, "MethodNotAllowedException", "Method Not Allowed")

    def _decide(self, principal: Principal, resource: str, remote: str | None) -> Decision:
        # The fan-out posts every message of an event to the same connections: evaluating its policies once per
        # (caller, connection ARN, source address) rather than per post takes a share of each post's CPU. The
        # decision depends on nothing else (the ARN names the region, the stage and the method; a principal and
        # its policies never change), so a cached one is the one IAM would give.
        key = (id(principal), resource, remote or "")
        cached = self._decisions.get(key)
        if cached is not None and cached[0] is principal:
            return cached[1]
        decision = principal.decide(
            MANAGE_CONNECTIONS, resource, request_context(remote, self._config.region, principal)
        )
        if len(self._decisions) >= DECISIONS_KEPT:
            self._decisions.clear()  # closed connections' entries go; live ones come back on their next post
        self._decisions[key] = (principal, decision)
        return decision

    def _post(self, connection_id: str, data: bytes) -> web.Response:
        if len(data) > self._config.max_message_bytes:
            return _too_large()
        connection = self._connections.get(connection_id)
        if connection is None or connection.close_intent is not None:
            return gone()
        transport = connection.transport
        ws = connection.ws
        if transport is None or ws is None or transport.is_closing() or ws.closed:
            return gone()  # ws.closed: its close handshake has begun, and no data frame may follow a close
        if transport.get_write_buffer_size() > self._config.client_buffer_bytes:
            return management_error(429, "LimitExceededException", "Client side buffer is full")
        # API Gateway delivers posted data as one text frame, byte for byte.
        self._writes.write(transport, text_frame(data))
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("POST @connections/%s %d bytes", connection_id, len(data))
        return web.Response(status=200)

    def _get(self, connection_id: str) -> web.Response:
        connection = self._connections.get(connection_id)
        if connection is None or connection.close_intent is not None:
            return gone()
        info = {
            "connectedAt": _iso(connection.connected_at),
            "identity": {
                "sourceIp": connection.source_ip,
                "userAgent": connection.identity.get("userAgent", ""),
            },
            "lastActiveAt": _iso(connection.last_active),
        }
        return web.Response(status=200, body=json.dumps(info).encode(), content_type=JSON)

    def _delete(self, connection_id: str) -> web.Response:
        connection = self._connections.get(connection_id)
        if connection is None or connection.close_intent is not None:
            return gone()
        self._close(connection, WSCloseCode.OK, "")
        return web.Response(status=204)


def text_frame(data: bytes) -> bytes:
    """`data` as one unmasked, final WebSocket text frame (RFC 6455 section 5.2), as a server sends it."""
    length = len(data)
    if length < 126:
        return bytes((0x81, length)) + data
    if length < 1 << 16:
        return bytes((0x81, 126)) + length.to_bytes(2, "big") + data
    return bytes((0x81, 127)) + length.to_bytes(8, "big") + data


def _too_large() -> web.Response:
    return management_error(413, "PayloadTooLargeException", "Request entity too large")


def _limits_of(config: GatewayConfig) -> tuple[float, int | None]:
    return config.management_rate_per_second, config.management_burst


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
