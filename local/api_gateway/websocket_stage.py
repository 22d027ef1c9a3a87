"""The WebSocket half of the stage: the handshake, frames to routes, closing and `$disconnect`."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import time
from collections.abc import Awaitable, Mapping
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, hdrs, web
from aiohttp.http_websocket import WebSocketError
from aiohttp.web_response import StreamResponse

from local.api_gateway.access_log import log_route
from local.api_gateway.authorizer import RequestAuthorizer
from local.api_gateway.config import GatewayConfig
from local.api_gateway.connection import (
    ABNORMAL_REASON,
    GOING_AWAY,
    MESSAGE_TOO_BIG_REASON,
    NO_STATUS_REASON,
    Connection,
    close_quietly,
)
from local.api_gateway.connection_timers import ConnectionTimers
from local.api_gateway.error_responses import Refusal
from local.api_gateway.frame_size_limit import GatewayWebSocket
from local.api_gateway.lambda_events import (
    event_headers,
    header,
    new_id,
    query_parameters,
    request_context,
    status_of,
)
from local.api_gateway.throttle import TokenBucket
from local.api_gateway.turn_writes import TurnWrites
from local.lambda_runtime.errors import LambdaShutdownError
from local.lambda_runtime.function import LambdaFunction

logger = logging.getLogger("quanttrade.local.gateway")

# The writer never waits for the socket to drain: a post must answer at once, and
# a client that stops reading is reported as LimitExceeded (see client_buffer_bytes)
# instead of stalling the fan-out function that posted to it.
_NO_WRITE_BACKPRESSURE = 1 << 62
_SPECIAL_ROUTES = frozenset({"$connect", "$disconnect"})
_EMPTY_HEADERS: Mapping[str, str] = {}


class WebSocketStage:
    """Accepts WebSocket connections and runs their routes' functions, as API Gateway does.

    `connections` holds the open ones by id (the Management API serves them);
    `request_close` closes one the way the gateway decides to (timers,
    `DELETE @connections`, stopping).
    """

    def __init__(
        self,
        config: GatewayConfig,
        routes: Mapping[str, LambdaFunction],
        authorizer: RequestAuthorizer | None,
        writes: TurnWrites,
    ) -> None:
        self._routes = dict(routes)
        self._writes = writes  # what the Management API posts to connections, until the turn's end
        self._authorizer = authorizer
        self._message_routes = frozenset(key for key in self._routes if key not in _SPECIAL_ROUTES)
        self._route_field = _parse_route_selection(config.route_selection_expression)
        self.config = config  # replaced as a whole by `LocalGateway.config`; read where it is needed
        self._timers = ConnectionTimers(lambda: self.config, self.request_close)
        self.connections: dict[str, Connection] = {}
        self._background: set[asyncio.Task[None]] = set()
        self.stopping = False
        self._connect_bucket = (
            None if config.connect_rate_per_second is None else TokenBucket(config.connect_rate_per_second, None)
        )

    # ------------------------------------------------------------ handshake

    async def serve(self, request: web.Request) -> StreamResponse:
        """One WebSocket connection, from its handshake to its `$disconnect`."""
        if self.stopping:
            return Refusal(503, "Service Unavailable").response()
        if not web.WebSocketResponse().can_prepare(request):
            return Refusal(400, "Bad Request").response()
        if self._connect_bucket is not None and not self._connect_bucket.take():
            return Refusal(429, "Limit Exceeded", "LimitExceededException").response()
        connection = Connection(
            new_id(),
            request.remote or "127.0.0.1",
            request.headers.get(hdrs.USER_AGENT),
            self.config.domain_name or request.host,
        )
        request_id = new_id()
        trace_id = f"Root=1-{int(connection.connected_at):08x}-{os.urandom(12).hex()}"
        try:
            if self._authorizer is not None:
                connection.authorizer = await self._authorizer.authorize(
                    self.config, request, connection, request_id, trace_id
                )
            response_headers = await self._invoke_connect(request, connection, request_id, trace_id)
        except Refusal as refusal:
            log_route(connection, "CONNECT", "$connect", refusal.status, request_id)
            return refusal.response()

        protocol = header(response_headers, "Sec-WebSocket-Protocol")
        config = self.config
        ws = GatewayWebSocket(
            max_frame_bytes=config.max_frame_bytes,
            writes=self._writes,
            protocols=(protocol,) if protocol else (),
            compress=False,  # API Gateway negotiates no permessage-deflate
            max_msg_size=config.max_message_bytes + 1,  # aiohttp rejects sizes >= its limit
            timeout=config.close_timeout,
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
        self.connections[connection.connection_id] = connection
        log_route(connection, "CONNECT", "$connect", 200, request_id)
        if self.stopping:
            self.request_close(connection, WSCloseCode.GOING_AWAY, GOING_AWAY)
        else:
            self._timers.arm(connection)
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

    async def _invoke_connect(
        self, request: web.Request, connection: Connection, request_id: str, trace_id: str
    ) -> Mapping[str, str]:
        function = self._routes.get("$connect")
        if function is None:
            return _EMPTY_HEADERS
        headers, multi_headers = event_headers(self.config, request, trace_id, keep_hop_by_hop=False)
        context = request_context(self.config, connection, "$connect", "CONNECT", request_id, time.time())
        if connection.authorizer is not None:
            context["authorizer"] = dict(connection.authorizer)
        event = {
            "headers": headers,
            "multiValueHeaders": multi_headers,
            **query_parameters(request, always=False),
            "requestContext": context,
            "isBase64Encoded": False,
        }
        try:
            result = await function.invoke(event)
        except Exception:
            logger.exception("$connect failed for %s", connection.connection_id)
            raise Refusal(500, "Internal server error") from None
        status = status_of(result)
        if 200 <= status < 300:
            result_headers = result.get("headers") if isinstance(result, dict) else None
            return result_headers if isinstance(result_headers, dict) else _EMPTY_HEADERS
        if not 400 <= status < 600:
            raise Refusal(500, "Internal server error")
        body = result.get("body") if isinstance(result, dict) else None
        message = "Internal server error" if status >= 500 else "Forbidden"
        raise Refusal(status, message, body=body if isinstance(body, str) else None)

    # ------------------------------------------------------------ connected

    async def _receive(self, connection: Connection, ws: GatewayWebSocket) -> None:
        while True:
            message = await ws.receive()
            kind = message.type
            if kind is WSMsgType.TEXT:
                connection.touch()
                self._dispatch(connection, message.data, is_base64=False)
            elif kind is WSMsgType.BINARY:
                connection.touch()
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

    def _dispatch(self, connection: Connection, body: str, *, is_base64: bool) -> None:
        # The route selection expression cannot look into a binary body: binary frames go to $default.
        route_key = "$default" if is_base64 else self._select_route(body)
        function = self._routes.get(route_key)
        request_id = new_id()
        if function is None:
            log_route(connection, "MESSAGE", route_key, 403, request_id)
            self._spawn(connection, self._send_error(connection, "Forbidden", request_id))
            return
        context = request_context(self.config, connection, route_key, "MESSAGE", request_id, time.time())
        context["messageId"] = new_id()
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

    def _spawn(self, connection: Connection, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        connection.pending.add(task)
        task.add_done_callback(connection.pending.discard)

    async def _run_route(
        self, connection: Connection, route_key: str, function: LambdaFunction, event: dict[str, Any], request_id: str
    ) -> None:
        started = time.monotonic()
        try:
            result = await function.invoke(event)
        except Exception as exc:
            logger.error("route %s failed for %s: %s: %s", route_key, connection.connection_id, type(exc).__name__, exc)
            log_route(connection, "MESSAGE", route_key, 500, request_id, started)
            await self._send_error(connection, "Internal server error", request_id)
            return
        log_route(connection, "MESSAGE", route_key, status_of(result), request_id, started)
        if route_key in self.config.two_way_routes:
            body = result.get("body") if isinstance(result, dict) else result
            if body is not None:
                await self._send_text(connection, body if isinstance(body, str) else json.dumps(body))

    async def _send_error(self, connection: Connection, message: str, request_id: str) -> None:
        # What API Gateway tells the client when an integration fails or no route matches.
        await self._send_text(
            connection,
            json.dumps({"message": message, "connectionId": connection.connection_id, "requestId": request_id}),
        )

    async def _send_text(self, connection: Connection, text: str) -> None:
        ws = connection.ws
        if ws is None or connection.finished or connection.close_intent is not None:
            return
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.send_str(text)

    # ------------------------------------------------------------ closing

    def request_close(self, connection: Connection, code: int, reason: str) -> None:
        if connection.close_intent is not None or connection.finished or connection.ws is None:
            return
        connection.close_intent = (int(code), reason)
        connection.closer = asyncio.ensure_future(close_quietly(connection.ws, code, reason))

    async def close_all(self) -> None:
        """Close every connection with 1001 and wait, within `stop_disconnect_seconds`, for their `$disconnect`."""
        connections = list(self.connections.values())
        for connection in connections:
            self.request_close(connection, WSCloseCode.GOING_AWAY, GOING_AWAY)
        waits = [asyncio.ensure_future(connection.done.wait()) for connection in connections]
        if not waits:
            return
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

    async def wait_for_finishing(self, deadline: float) -> None:
        """Wait until the monotonic `deadline` (at least 0.1 s) for connections still delivering `$disconnect`."""
        if self._background:
            await asyncio.wait(set(self._background), timeout=max(0.1, deadline - time.monotonic()))

    async def _finish(self, connection: Connection, outcome: tuple[int, str]) -> None:
        """Forget the connection and invoke `$disconnect`: exactly once, whatever ended it."""
        if connection.finished:
            return
        connection.finished = True
        if self.connections.get(connection.connection_id) is connection:
            del self.connections[connection.connection_id]
        ConnectionTimers.cancel(connection)
        if connection.closer is not None:
            await connection.closer
        elif connection.ws is not None and not connection.ws.closed:
            await close_quietly(connection.ws, WSCloseCode.GOING_AWAY, GOING_AWAY)
        try:
            await self._invoke_disconnect(connection, outcome)
        finally:
            connection.done.set()

    async def _invoke_disconnect(self, connection: Connection, outcome: tuple[int, str]) -> None:
        function = self._routes.get("$disconnect")
        if function is None:
            return
        code, reason = outcome
        request_id = new_id()
        context = request_context(self.config, connection, "$disconnect", "DISCONNECT", request_id, time.time())
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
            status = status_of(result)
        log_route(connection, "DISCONNECT", "$disconnect", status, request_id, started)


def _parse_route_selection(expression: str) -> str:
    """The body field a `$request.body.<field>` route selection expression names."""
    prefix = "$request.body."
    field_name = expression.removeprefix(prefix)
    if not expression.startswith(prefix) or not field_name.isidentifier():
        raise ValueError(f"route selection expression {expression!r}: only $request.body.<field> is supported here")
    return field_name
