"""The local gateway behaves like an API Gateway WebSocket API stage, over real sockets.

Handlers here are small test doubles, not the product's: these tests pin the
emulator's contract (handshake, routing, event shapes, Management API, limits,
lifecycle), which the product's e2e tests then rely on.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import boto3
import pytest
from aiohttp import web
from aws_lambda_powertools.utilities.parser.models.apigw_websocket import (
    APIGatewayWebSocketConnectEventModel,
    APIGatewayWebSocketDisconnectEventModel,
    APIGatewayWebSocketMessageEventModel,
)
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from local.api_gateway.access_log import redact_query
from local.api_gateway.config import GatewayConfig
from local.api_gateway.server import LocalGateway
from local.lambda_runtime.errors import LambdaTimeoutError
from local.lambda_runtime.function import LambdaFunction
from local.lambda_worker import LambdaContext
from local.principals import ADMIN_CREDENTIALS, Principals
from local.signed_http import require_invoke
from local.sigv4 import Credentials, sign_headers

pytestmark = pytest.mark.e2e

CONNECTION_ID = re.compile(r"^[A-Za-z0-9_-]{15}=$")
FORGED = {"Authorization": "AWS4-HMAC-SHA256 Credential=testing/20240101/us-east-1/execute-api/aws4_request"}


def signed(
    url: str, data: bytes = b"", credentials: Credentials = ADMIN_CREDENTIALS, method: str = "POST"
) -> dict[str, str]:
    """Headers that sign a request to `url` as boto3 would (SigV4, service execute-api)."""
    return sign_headers(method, url, credentials, service="execute-api", region="us-east-1", body=data)


# ---------------------------------------------------------------- test doubles


async def eventually(predicate: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
    """Poll until `predicate()` is truthy; its value is returned. Fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


class Recorder:
    """What the test handlers saw, written from Lambda worker threads, read from the test."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: list[tuple[str, dict[str, Any], LambdaContext]] = []

    def record(self, name: str, event: dict[str, Any], context: LambdaContext) -> None:
        with self._lock:
            self._calls.append((name, event, context))

    def events(self, name: str) -> list[dict[str, Any]]:
        with self._lock:
            return [event for called, event, _ in self._calls if called == name]

    def contexts(self, name: str) -> list[LambdaContext]:
        with self._lock:
            return [context for called, _, context in self._calls if called == name]

    async def wait(self, name: str, count: int = 1, timeout: float = 5.0) -> list[dict[str, Any]]:
        return await eventually(lambda: len(self.events(name)) >= count and self.events(name), timeout, name)


def policy(effect: str, context: dict[str, Any] | None = None, resource: str = "arn:aws:execute-api:*") -> dict:
    return {
        "principalId": "user-42",
        "policyDocument": {
            "Version": "2012-10-17",
            "Statement": [{"Action": "execute-api:Invoke", "Effect": effect, "Resource": resource}],
        },
        "context": context or {},
    }


class Functions:
    """Test Lambda handlers. The token picks the authorizer's answer; the action picks the message handler's."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.release = threading.Event()  # lets "slow" messages finish
        self.connect_answer: Any = {"statusCode": 200}
        self.connect_hook: Callable[[dict[str, Any]], None] | None = None

    def authorizer(self, event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
        self.recorder.record("authorizer", event, context)
        token = event["queryStringParameters"]["token"]
        if token == "deny":
            return policy("Deny")
        if token == "unauthorized":
            raise Exception("Unauthorized")
        if token == "crash":
            raise RuntimeError("authorizer bug")
        if token == "nested":
            return policy("Allow", {"claims": {"sub": "x"}})
        if token == "other-route":
            return policy("Allow", resource="arn:aws:execute-api:us-east-1:123456789012:otherapi/*/$connect")
        return policy("Allow", {"userId": f"user-{token}", "tier": "premium", "level": 3, "admin": False})

    def connect(self, event: dict[str, Any], context: LambdaContext) -> Any:
        self.recorder.record("$connect", event, context)
        if self.connect_hook is not None:
            self.connect_hook(event)
        if isinstance(self.connect_answer, Exception):
            raise self.connect_answer
        return self.connect_answer

    def disconnect(self, event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
        self.recorder.record("$disconnect", event, context)
        return {"statusCode": 200}

    def message(self, event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
        route = event["requestContext"]["routeKey"]
        self.recorder.record(route, event, context)
        if route == "boom":
            raise RuntimeError("handler bug")
        if route == "slow":
            self.release.wait(10)
        return {"statusCode": 200, "body": f"reply:{event['body']}"}

    def handlers(self, actions: tuple[str, ...] = ("echo", "boom", "slow", "oneway")) -> dict[str, Any]:
        return {
            "$connect": self.connect,
            "$disconnect": self.disconnect,
            "$default": self.message,
            **dict.fromkeys(actions, self.message),
        }


@dataclass
class Stack:
    gateway: LocalGateway
    functions: Functions
    recorder: Recorder
    clients: list[ClientConnection] = field(default_factory=list)

    async def connect(self, token: str = "t1", **kwargs: Any) -> tuple[ClientConnection, str]:
        """A connected client and the connection id the gateway gave it."""
        ws = await connect(f"{self.gateway.url}?token={token}", proxy=None, open_timeout=5, **kwargs)
        self.clients.append(ws)
        ids = [
            event["requestContext"]["connectionId"]
            for event in self.recorder.events("$connect")
            if (event.get("queryStringParameters") or {}).get("token") == token
        ]
        return ws, ids[-1]

    def management(self, endpoint: str | None = None, **config: Any) -> Any:
        return boto3.client(
            "apigatewaymanagementapi",
            endpoint_url=endpoint or self.gateway.management_endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=Config(retries={"total_max_attempts": 1, "mode": "standard"}, **config),
        )


Launch = Callable[..., Awaitable[Stack]]
_DEFAULT = object()


@pytest.fixture
async def launch() -> AsyncIterator[Launch]:
    """Starts gateways on free ports inside the test's event loop; stops them (and their clients) afterwards."""
    stacks: list[Stack] = []

    async def start(
        *,
        handlers: Any = _DEFAULT,
        authorizer: Any = _DEFAULT,
        readiness_checks: Any = None,
        root_handler: Any = None,
        extra_routes: Any = (),
        principals: Principals | None = None,
        **config: Any,
    ) -> Stack:
        recorder = Recorder()
        functions = Functions(recorder)
        gateway = LocalGateway(
            GatewayConfig(port=0, **config),
            functions.handlers() if handlers is _DEFAULT else handlers(functions),
            functions.authorizer if authorizer is _DEFAULT else authorizer,
            readiness_checks=readiness_checks,
            root_handler=root_handler,
            extra_routes=extra_routes,
            principals=principals,
        )
        await gateway.start()
        stack = Stack(gateway, functions, recorder)
        stacks.append(stack)
        return stack

    yield start
    for stack in stacks:
        stack.functions.release.set()
        for client in stack.clients:
            client.transport.abort()
        await stack.gateway.stop()


@pytest.fixture
async def stack(launch: Launch) -> Stack:
    return await launch()


async def refused_status(stack: Stack, query: str) -> int:
    with pytest.raises(InvalidStatus) as refused:
        await connect(f"{stack.gateway.url}{query}", proxy=None, open_timeout=5)
    return refused.value.response.status_code


async def closed(ws: ClientConnection, timeout: float = 10.0) -> tuple[int | None, str | None]:
    await asyncio.wait_for(ws.wait_closed(), timeout)
    return ws.close_code, ws.close_reason


async def raw_post(stack: Stack, connection_id: str, data: bytes, headers: dict[str, str] | None = None) -> Any:
    url = f"{stack.gateway.http_url}/@connections/{connection_id}"
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=data, headers=signed(url, data) if headers is None else headers) as response,
    ):
        return response.status, response.headers.get("x-amzn-ErrorType"), await response.read()


# ---------------------------------------------------------------- handshake


async def test_handshake_without_token_is_refused_with_401_before_the_authorizer_runs(stack: Stack) -> None:
    # GIVEN a stage whose authorizer's identity source is the token query parameter
    # WHEN a client connects without it
    status = await refused_status(stack, "")
    # THEN API Gateway answers 401 without invoking anything
    assert status == 401
    assert stack.recorder.events("authorizer") == []
    assert stack.recorder.events("$connect") == []


@pytest.mark.parametrize(
    ("token", "expected"),
    [("deny", 403), ("other-route", 403), ("unauthorized", 401), ("crash", 500), ("nested", 500)],
)
async def test_authorizer_answers_map_to_handshake_statuses(stack: Stack, token: str, expected: int) -> None:
    # GIVEN an authorizer that denies, raises Unauthorized, fails, or answers with an unusable context
    # WHEN a client connects with the token that triggers it
    status = await refused_status(stack, f"?token={token}")
    # THEN the handshake is refused with API Gateway's status and $connect never runs
    assert status == expected
    assert len(stack.recorder.events("authorizer")) == 1
    assert stack.recorder.events("$connect") == []


@pytest.mark.parametrize(
    ("answer", "expected"),
    [({"statusCode": 500}, 500), (RuntimeError("connect bug"), 500), ({"statusCode": 403, "body": "no"}, 403)],
)
async def test_connect_route_refusal_refuses_the_handshake(stack: Stack, answer: Any, expected: int) -> None:
    # GIVEN a $connect handler that answers non-2xx or raises
    stack.functions.connect_answer = answer
    # WHEN a client connects
    status = await refused_status(stack, "?token=t1")
    # THEN the handshake is refused with that status (500 for an error) and no $disconnect follows
    assert status == expected
    assert len(stack.recorder.events("$connect")) == 1
    await asyncio.sleep(0)
    assert stack.recorder.events("$disconnect") == []


async def test_authorizer_event_is_a_websocket_request_authorizer_event(stack: Stack) -> None:
    # WHEN a client connects with a token
    ws, connection_id = await stack.connect("abc", additional_headers={"X-Client": "tests"})
    # THEN the authorizer got API Gateway's REQUEST event for $connect
    (event,) = stack.recorder.events("authorizer")
    config = stack.gateway.config
    assert event["type"] == "REQUEST"
    assert event["methodArn"] == f"arn:aws:execute-api:{config.region}:{config.account}:{config.api_id}/local/$connect"
    assert event["queryStringParameters"] == {"token": "abc"}
    assert event["multiValueQueryStringParameters"] == {"token": ["abc"]}
    assert event["headers"]["X-Client"] == "tests"
    assert event["headers"]["Upgrade"] == "websocket"
    assert event["multiValueHeaders"]["X-Client"] == ["tests"]
    context = event["requestContext"]
    assert context["routeKey"] == "$connect"
    assert context["eventType"] == "CONNECT"
    assert context["connectionId"] == connection_id
    assert context["stage"] == "local"
    assert context["apiId"] == config.api_id
    assert context["identity"]["sourceIp"] == "127.0.0.1"
    assert context["identity"]["userAgent"].startswith("Python/")
    await ws.close()


async def test_connect_event_carries_the_authorizer_context_and_message_events_keep_it(stack: Stack) -> None:
    # GIVEN a connection the authorizer allowed with a context of strings, numbers and booleans
    ws, connection_id = await stack.connect("t7")
    assert CONNECTION_ID.match(connection_id)
    (connect_event,) = stack.recorder.events("$connect")
    # THEN the CONNECT event has API Gateway's shape, with the context stringified as API Gateway does
    APIGatewayWebSocketConnectEventModel.model_validate(connect_event)
    assert "Upgrade" not in connect_event["headers"]
    assert connect_event["headers"]["X-Forwarded-Proto"] == "http"
    assert connect_event["headers"]["X-Amzn-Trace-Id"].startswith("Root=1-")
    assert connect_event["queryStringParameters"] == {"token": "t7"}
    authorizer = connect_event["requestContext"]["authorizer"]
    assert authorizer["principalId"] == "user-42"
    assert authorizer["userId"] == "user-t7"
    assert (authorizer["tier"], authorizer["level"], authorizer["admin"]) == ("premium", "3", "false")
    assert isinstance(authorizer["integrationLatency"], int)
    # WHEN the client sends a message
    await ws.send(json.dumps({"action": "echo", "n": 1}))
    (message_event,) = await stack.recorder.wait("echo")
    # THEN the MESSAGE event has API Gateway's shape and the same authorizer context
    APIGatewayWebSocketMessageEventModel.model_validate(message_event)
    context = message_event["requestContext"]
    assert context["eventType"] == "MESSAGE"
    assert context["messageDirection"] == "IN"
    assert context["connectionId"] == connection_id
    assert context["connectedAt"] == connect_event["requestContext"]["connectedAt"]
    assert context["requestTimeEpoch"] >= context["connectedAt"]
    assert CONNECTION_ID.match(context["messageId"])
    assert {k: v for k, v in context["authorizer"].items() if k != "integrationLatency"} == {
        k: v for k, v in authorizer.items() if k != "integrationLatency"
    }
    assert message_event["body"] == '{"action": "echo", "n": 1}'
    assert message_event["isBase64Encoded"] is False
    await ws.close()


async def test_every_invocation_gets_a_lambda_context(stack: Stack) -> None:
    # WHEN a client connects
    ws, _ = await stack.connect()
    # THEN the handler's context looks like the Python runtime's
    (context,) = stack.recorder.contexts("$connect")
    assert context.function_name == "connect"
    assert context.function_version == "$LATEST"
    assert context.invoked_function_arn == "arn:aws:lambda:us-east-1:123456789012:function:connect"
    assert context.memory_limit_in_mb == "256"
    assert re.fullmatch(r"[0-9a-f-]{36}", context.aws_request_id)
    assert context.log_group_name == "/aws/lambda/connect"
    assert "[$LATEST]" in context.log_stream_name
    assert 0 < context.get_remaining_time_in_millis() <= 10_000
    await ws.close()


async def test_no_permessage_deflate_is_negotiated(stack: Stack) -> None:
    # WHEN a client offering permessage-deflate connects
    ws, _ = await stack.connect()
    # THEN the gateway accepts no extension, as API Gateway does
    assert ws.response is not None
    assert ws.response.headers.get("Sec-WebSocket-Extensions") is None
    await ws.close()


async def test_new_connections_past_the_connect_rate_get_429(launch: Launch) -> None:
    # GIVEN a stage that accepts two new connections a second
    stack = await launch(connect_rate_per_second=2)
    # WHEN clients connect faster than that
    statuses = []
    for index in range(6):
        try:
            await stack.connect(f"c{index}")
            statuses.append(101)
        except InvalidStatus as refused:
            statuses.append(refused.response.status_code)
    # THEN the burst is accepted and the rest throttled
    assert statuses[:2] == [101, 101]
    assert 429 in statuses


async def test_without_an_authorizer_no_token_is_needed(launch: Launch) -> None:
    stack = await launch(authorizer=None)
    ws = await connect(stack.gateway.url, proxy=None, open_timeout=5)
    (event,) = await stack.recorder.wait("$connect")
    assert "authorizer" not in event["requestContext"]
    assert "queryStringParameters" not in event
    await ws.close()


async def test_the_token_is_never_logged(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    # GIVEN access logging at its most verbose
    caplog.set_level(logging.DEBUG, logger="quanttrade.local.gateway")
    # WHEN a client connects with a secret token and leaves
    ws, connection_id = await stack.connect("s3cr3t-value")
    await ws.close()
    await stack.recorder.wait("$disconnect")
    await eventually(lambda: "token=REDACTED" in caplog.text, what="the upgrade request's access log line")
    # THEN the log names the connection but never the token
    assert connection_id in caplog.text
    assert "s3cr3t-value" not in caplog.text
    assert redact_query("a=1&token=x&access_token=y") == "a=1&token=REDACTED&access_token=REDACTED"


# ---------------------------------------------------------------- routing


async def test_frames_are_routed_by_action_else_to_default(stack: Stack) -> None:
    ws, _ = await stack.connect()
    # WHEN the client sends a known action, an unknown one, non-JSON, a non-object and a binary frame
    await ws.send(json.dumps({"action": "echo"}))
    await ws.send(json.dumps({"action": "nope"}))
    await ws.send("plain text")
    await ws.send('["action", "echo"]')
    await ws.send(b"\x00\x01binary")
    # THEN the known action gets its route and everything else $default
    (echo,) = await stack.recorder.wait("echo")
    assert echo["requestContext"]["routeKey"] == "echo"
    defaults = await stack.recorder.wait("$default", 4)
    bodies = {event["body"] for event in defaults}
    encoded = base64.b64encode(b"\x00\x01binary").decode()
    assert bodies == {'{"action": "nope"}', "plain text", '["action", "echo"]', encoded}
    binary = next(event for event in defaults if event["isBase64Encoded"])
    assert base64.b64decode(binary["body"]) == b"\x00\x01binary"
    await ws.close()


async def test_without_a_default_route_unmatched_frames_get_forbidden(launch: Launch) -> None:
    # GIVEN a stage with an echo route and no $default
    stack = await launch(
        handlers=lambda f: {"$connect": f.connect, "echo": f.message}, two_way_routes=frozenset({"echo"})
    )
    ws, connection_id = await stack.connect()
    # WHEN the client sends a frame no route matches
    await ws.send("unroutable")
    # THEN API Gateway's Forbidden message comes back on the connection
    answer = json.loads(await asyncio.wait_for(ws.recv(), 5))
    assert answer["message"] == "Forbidden"
    assert answer["connectionId"] == connection_id
    assert CONNECTION_ID.match(answer["requestId"])
    await ws.close()


async def test_route_response_is_sent_only_for_two_way_routes(launch: Launch) -> None:
    # GIVEN echo configured with a route response and oneway without, run by a single worker in order
    stack = await launch(two_way_routes=frozenset({"echo"}), default_pool_size=1)
    ws, _ = await stack.connect()
    # WHEN the client sends to the one-way route and then to the two-way route
    await ws.send(json.dumps({"action": "oneway"}))
    await ws.send(json.dumps({"action": "echo"}))
    # THEN the first (and only) frame it gets is the two-way route's body
    assert await asyncio.wait_for(ws.recv(), 5) == 'reply:{"action": "echo"}'
    assert len(stack.recorder.events("oneway")) == 1
    await ws.send(json.dumps({"action": "echo", "again": True}))
    assert await asyncio.wait_for(ws.recv(), 5) == 'reply:{"action": "echo", "again": true}'
    await ws.close()


async def test_default_topology_has_no_route_responses(launch: Launch) -> None:
    # GIVEN the default configuration, where replies go through the Management API (one worker: runs in order)
    stack = await launch(default_pool_size=1)
    ws, _ = await stack.connect()
    # WHEN a handler returns a body and then the gateway posts something
    await ws.send(json.dumps({"action": "echo"}))
    await stack.recorder.wait("echo")
    # THEN the handler's body never reaches the client: the first frame is a deliberate failure notice
    await ws.send(json.dumps({"action": "boom"}))
    answer = json.loads(await asyncio.wait_for(ws.recv(), 5))
    assert answer["message"] == "Internal server error"
    assert stack.gateway.config.two_way_routes == frozenset()
    await ws.close()


async def test_a_failing_handler_gets_internal_server_error_to_the_client(stack: Stack) -> None:
    ws, connection_id = await stack.connect()
    await ws.send(json.dumps({"action": "boom"}))
    answer = json.loads(await asyncio.wait_for(ws.recv(), 5))
    assert answer["message"] == "Internal server error"
    assert answer["connectionId"] == connection_id
    # AND the connection stays usable
    assert ws.close_code is None
    await ws.close()


async def test_a_slow_handler_does_not_stall_other_connections_or_frames(launch: Launch) -> None:
    # GIVEN two connections, and echo and slow routes with route responses
    stack = await launch(two_way_routes=frozenset({"echo", "slow"}))
    slow_client, _ = await stack.connect("a")
    other_client, _ = await stack.connect("b")
    # WHEN one connection's handler blocks
    await slow_client.send(json.dumps({"action": "slow"}))
    await stack.recorder.wait("slow")
    # THEN the other connection, and further frames of the same connection, are still served
    await other_client.send(json.dumps({"action": "echo", "from": "b"}))
    assert await asyncio.wait_for(other_client.recv(), 5) == 'reply:{"action": "echo", "from": "b"}'
    await slow_client.send(json.dumps({"action": "echo", "from": "a"}))
    assert await asyncio.wait_for(slow_client.recv(), 5) == 'reply:{"action": "echo", "from": "a"}'
    stack.functions.release.set()
    assert await asyncio.wait_for(slow_client.recv(), 5) == 'reply:{"action": "slow"}'
    await slow_client.close()
    await other_client.close()


# ---------------------------------------------------------------- Management API


async def test_post_delivers_the_exact_bytes_as_one_text_frame_in_order(stack: Stack) -> None:
    ws, connection_id = await stack.connect()
    client = stack.management()
    data = '{"price": 101.5, "symbol": "€UR"}\n  '.encode()
    # WHEN boto3 posts to the connection (its id arrives URL-encoded)
    await asyncio.to_thread(client.post_to_connection, ConnectionId=connection_id, Data=data)
    # THEN the client gets one text frame with exactly those bytes
    frame = await asyncio.wait_for(ws.recv(), 5)
    assert isinstance(frame, str)
    assert frame.encode() == data

    # AND posts are delivered in the order they were made
    def post_many() -> None:
        for index in range(50):
            client.post_to_connection(ConnectionId=connection_id, Data=str(index).encode())

    await asyncio.to_thread(post_many)
    assert [await asyncio.wait_for(ws.recv(), 5) for _ in range(50)] == [str(index) for index in range(50)]

    # AND so are posts of every size a frame encodes its length differently for, up to the largest message
    for size in (125, 126, 65_535, 65_536, stack.gateway.config.max_message_bytes):
        data = bytes(ord("a") + index % 26 for index in range(size))
        await asyncio.to_thread(client.post_to_connection, ConnectionId=connection_id, Data=data)
        assert (await asyncio.wait_for(ws.recv(), 5)).encode() == data, size
    await ws.close()


async def test_management_api_answers_with_and_without_the_stage_in_the_path(stack: Stack) -> None:
    ws, connection_id = await stack.connect()
    for endpoint in (stack.gateway.management_endpoint, stack.gateway.http_url):
        client = stack.management(endpoint)
        await asyncio.to_thread(client.post_to_connection, ConnectionId=connection_id, Data=endpoint.encode())
        assert await asyncio.wait_for(ws.recv(), 5) == endpoint
    # AND a stage this gateway does not serve is refused
    wrong = stack.management(f"{stack.gateway.http_url}/prod")
    with pytest.raises(wrong.exceptions.ForbiddenException):
        await asyncio.to_thread(wrong.post_to_connection, ConnectionId=connection_id, Data=b"x")
    await ws.close()


async def test_get_connection_returns_its_times_and_identity(stack: Stack) -> None:
    ws, connection_id = await stack.connect()
    await ws.send(json.dumps({"action": "echo"}))
    await stack.recorder.wait("echo")
    info = await asyncio.to_thread(stack.management().get_connection, ConnectionId=connection_id)
    assert info["Identity"]["SourceIp"] == "127.0.0.1"
    assert info["Identity"]["UserAgent"].startswith("Python/")
    assert info["ConnectedAt"] <= info["LastActiveAt"]
    assert abs(info["ConnectedAt"].timestamp() - time.time()) < 60
    await ws.close()


async def test_delete_closes_the_connection_and_disconnect_runs(stack: Stack) -> None:
    ws, connection_id = await stack.connect()
    client = stack.management()
    # WHEN the connection is deleted through the Management API
    answer = await asyncio.to_thread(client.delete_connection, ConnectionId=connection_id)
    # THEN the call succeeds with 204, the client sees a normal close and $disconnect runs once
    assert answer["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert await closed(ws) == (1000, "")
    (event,) = await stack.recorder.wait("$disconnect")
    APIGatewayWebSocketDisconnectEventModel.model_validate(event)
    assert event["requestContext"]["connectionId"] == connection_id
    assert event["requestContext"]["disconnectStatusCode"] == 1000
    assert event["requestContext"]["authorizer"]["userId"] == "user-t1"
    # AND the connection is gone for every later call
    with pytest.raises(client.exceptions.GoneException):
        await asyncio.to_thread(client.get_connection, ConnectionId=connection_id)
    with pytest.raises(client.exceptions.GoneException):
        await asyncio.to_thread(client.delete_connection, ConnectionId=connection_id)
    await asyncio.sleep(0.05)
    assert len(stack.recorder.events("$disconnect")) == 1


async def test_post_after_the_client_closed_raises_gone(stack: Stack) -> None:
    ws, connection_id = await stack.connect()
    # WHEN the client closes with its own code and reason
    await ws.close(code=4000, reason="bye")
    (event,) = await stack.recorder.wait("$disconnect")
    # THEN $disconnect reports them, and boto3 raises GoneException for a post
    assert (event["requestContext"]["disconnectStatusCode"], event["requestContext"]["disconnectReason"]) == (
        4000,
        "bye",
    )
    client = stack.management()
    with pytest.raises(client.exceptions.GoneException) as gone:
        await asyncio.to_thread(client.post_to_connection, ConnectionId=connection_id, Data=b"late")
    assert gone.value.response["ResponseMetadata"]["HTTPStatusCode"] == 410


async def test_posting_from_inside_connect_is_gone(stack: Stack) -> None:
    # GIVEN a $connect handler that tries to post to its own connection, which API Gateway does not allow
    client = stack.management()
    outcome: list[str] = []

    def post_to_self(event: dict[str, Any]) -> None:
        try:
            client.post_to_connection(ConnectionId=event["requestContext"]["connectionId"], Data=b"too early")
            outcome.append("delivered")
        except client.exceptions.GoneException:
            outcome.append("gone")

    stack.functions.connect_hook = post_to_self
    ws, _ = await stack.connect()
    # THEN the post is refused as Gone and the connection still opens
    assert outcome == ["gone"]
    assert ws.close_code is None
    await ws.close()


async def test_oversized_post_is_413(stack: Stack) -> None:
    ws, connection_id = await stack.connect()
    client = stack.management()
    with pytest.raises(client.exceptions.PayloadTooLargeException):
        await asyncio.to_thread(client.post_to_connection, ConnectionId=connection_id, Data=b"x" * (128 * 1024 + 1))
    # AND exactly 128 KB is fine
    await asyncio.to_thread(client.post_to_connection, ConnectionId=connection_id, Data=b"y" * (128 * 1024))
    assert len(await asyncio.wait_for(ws.recv(), 5)) == 128 * 1024
    await ws.close()


async def test_management_calls_past_the_rate_get_429(launch: Launch) -> None:
    # GIVEN a stage allowing 5 management calls a second and a client that does not retry throttling
    stack = await launch(management_rate_per_second=5)
    ws, connection_id = await stack.connect()
    client = stack.management()

    def post_burst() -> list[str]:
        outcomes = []
        for _ in range(20):
            try:
                client.post_to_connection(ConnectionId=connection_id, Data=b"tick")
                outcomes.append("ok")
            except client.exceptions.LimitExceededException as throttled:
                assert throttled.response["ResponseMetadata"]["HTTPStatusCode"] == 429
                outcomes.append("throttled")
        return outcomes

    # WHEN it posts a burst
    outcomes = await asyncio.to_thread(post_burst)
    # THEN the bucket's worth goes through and the rest are throttled
    assert outcomes[:5] == ["ok"] * 5
    assert outcomes.count("throttled") >= 10
    await ws.close()


async def test_a_throttle_fault_answers_the_next_n_posts_to_one_connection_with_429(stack: Stack) -> None:
    # GIVEN two connections, and the next two posts to the first one throttled
    first, first_id = await stack.connect("t1")
    second, second_id = await stack.connect("t2")
    client = stack.management()
    rule = stack.gateway.add_management_fault("throttle", connections=[first_id], count=2)

    def post(connection_id: str) -> str:
        try:
            client.post_to_connection(ConnectionId=connection_id, Data=b"tick")
        except client.exceptions.LimitExceededException as throttled:
            assert throttled.response["ResponseMetadata"]["HTTPStatusCode"] == 429
            assert throttled.response["Error"]["Message"] == "Rate exceeded"
            return "throttled"
        return "ok"

    # WHEN each gets three posts
    outcomes = await asyncio.to_thread(lambda: [(post(first_id), post(second_id)) for _ in range(3)])

    # THEN the first's first two were throttled with API Gateway's 429, the rest (and the other's) delivered
    assert outcomes == [("throttled", "ok"), ("throttled", "ok"), ("ok", "ok")]
    assert rule.exhausted and dict(rule.by_connection) == {first_id: 2}
    assert [c.status for c in stack.gateway.management_calls if c.connection_id == first_id] == [429, 429, 200]
    assert stack.gateway.management_fault_counts() == {"LimitExceededException": 2}
    assert await asyncio.wait_for(first.recv(), 5) == "tick"
    stack.gateway.remove_management_fault(rule)
    assert stack.gateway.management_faults == []
    await first.close()
    await second.close()


async def test_an_error_fault_answers_posts_and_closes_with_500_until_removed(stack: Stack) -> None:
    # GIVEN every post and every DELETE failing inside API Gateway
    ws, connection_id = await stack.connect()
    client = stack.management()
    with stack.gateway.management_fault("error", methods=["POST", "DELETE"]) as rule:
        # WHEN a post and a close are attempted
        with pytest.raises(ClientError) as posted:
            await asyncio.to_thread(client.post_to_connection, ConnectionId=connection_id, Data=b"x")
        with pytest.raises(ClientError) as deleted:
            await asyncio.to_thread(client.delete_connection, ConnectionId=connection_id)
        # ... while a GET is not covered by the rule
        await asyncio.to_thread(client.get_connection, ConnectionId=connection_id)
    # THEN both got API Gateway's 500, and the connection is still open
    for failed in (posted, deleted):
        assert failed.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
        assert failed.value.response["Error"]["Code"] == "InternalServerErrorException"
    assert dict(rule.by_method) == {"POST": 1, "DELETE": 1}
    # ... and once the rule is gone, the post goes through
    await asyncio.to_thread(client.post_to_connection, ConnectionId=connection_id, Data=b"after")
    assert await asyncio.wait_for(ws.recv(), 5) == "after"
    # ... and a rule for another caller does not touch the administrator's post
    with stack.gateway.management_fault("error", caller="quanttrade-fanout") as elsewhere:
        await asyncio.to_thread(client.post_to_connection, ConnectionId=connection_id, Data=b"mine")
    assert elsewhere.injected == 0
    assert await asyncio.wait_for(ws.recv(), 5) == "mine"
    await ws.close()


async def test_a_delayed_post_whose_caller_gave_up_is_not_delivered(stack: Stack) -> None:
    # GIVEN the next post held for 2 s, and a caller that waits 0.3 s for an answer and does not retry
    ws, connection_id = await stack.connect()
    impatient = stack.management(read_timeout=0.3)
    rule = stack.gateway.add_management_fault("delay", delay=2.0, count=1)

    # WHEN it posts, times out, and then posts again
    with pytest.raises(Exception, match="Read timeout"):
        await asyncio.to_thread(impatient.post_to_connection, ConnectionId=connection_id, Data=b"held")
    await asyncio.to_thread(stack.management().post_to_connection, ConnectionId=connection_id, Data=b"next")

    # THEN the held post was dropped when its delay ended, and only the second one reached the client
    await eventually(lambda: rule.dropped == 1, timeout=5, what="the held post to be dropped")
    assert await asyncio.wait_for(ws.recv(), 5) == "next"
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(ws.recv(), 0.5)
    assert stack.gateway.management_fault_counts() == {"delayed": 1}
    await ws.close()


async def test_a_management_fault_rate_answers_429_or_500_and_bad_faults_are_refused(launch: Launch) -> None:
    # GIVEN a stage configured to fault every Management API call (seeded)
    stack = await launch(management_fault_rate=1.0, management_fault_seed=3)
    ws, connection_id = await stack.connect()
    client = stack.management()

    def codes() -> list[str]:
        found = []
        for _ in range(10):
            with pytest.raises(ClientError) as failed:
                client.get_connection(ConnectionId=connection_id)
            found.append(failed.value.response["Error"]["Code"])
        return found

    # WHEN ten calls are made THEN each is a 429 or a 500, and both occur
    found = await asyncio.to_thread(codes)
    assert set(found) == {"LimitExceededException", "InternalServerErrorException"}
    assert sum(stack.gateway.management_fault_counts().values()) == 10
    # ... and a rate of 0 stops them
    stack.gateway.configure_management_faults(0.0)
    await asyncio.to_thread(client.get_connection, ConnectionId=connection_id)
    with pytest.raises(ValueError, match="within"):
        stack.gateway.configure_management_faults(1.5)
    with pytest.raises(ValueError, match="one of"):
        stack.gateway.add_management_fault("gone")
    with pytest.raises(ValueError, match="positive delay"):
        stack.gateway.add_management_fault("delay")
    with pytest.raises(ValueError, match="apply to"):
        stack.gateway.add_management_fault("error", methods=["PATCH"])
    await ws.close()


async def test_management_calls_without_sigv4_are_403(stack: Stack) -> None:
    ws, connection_id = await stack.connect()
    # WHEN a request carries no SigV4 Authorization header
    status, error_type, _ = await raw_post(stack, connection_id, b"x", headers={})
    # THEN it is refused as Forbidden, which boto3 maps to ForbiddenException
    assert (status, error_type) == (403, "ForbiddenException")
    unsigned = stack.management(signature_version=UNSIGNED)
    with pytest.raises(unsigned.exceptions.ForbiddenException):
        await asyncio.to_thread(unsigned.post_to_connection, ConnectionId=connection_id, Data=b"x")
    # AND the same request signed goes through
    assert (await raw_post(stack, connection_id, b"signed"))[0] == 200
    assert await asyncio.wait_for(ws.recv(), 5) == "signed"
    await ws.close()


async def test_a_forged_or_wrongly_signed_management_call_is_refused(stack: Stack) -> None:
    # GIVEN a connected client
    ws, connection_id = await stack.connect()
    url = f"{stack.gateway.http_url}/@connections/{connection_id}"
    # WHEN an Authorization header only looks like SigV4 THEN it is refused (it used to inject the frame)
    assert (await raw_post(stack, connection_id, b"forged", headers=FORGED))[:2] == (
        403,
        "IncompleteSignatureException",
    )
    # AND a signature by the right key over other bytes, or with the wrong secret, or by an unknown key
    tampered = signed(url, b"what was signed")
    assert (await raw_post(stack, connection_id, b"what is sent", headers=tampered))[:2] == (
        403,
        "InvalidSignatureException",
    )
    wrong_secret = signed(url, b"x", Credentials("testing", "not-the-secret"))
    assert (await raw_post(stack, connection_id, b"x", headers=wrong_secret))[1] == "InvalidSignatureException"
    stranger = signed(url, b"x", Credentials("AKIDSTRANGER", "whatever"))
    assert (await raw_post(stack, connection_id, b"x", headers=stranger))[1] == "UnrecognizedClientException"
    # AND a signature for one connection replayed on another is refused
    other_ws, other_id = await stack.connect("t2")
    replayed = signed(url, b"x")
    assert (await raw_post(stack, other_id, b"x", headers=replayed))[1] == "InvalidSignatureException"
    # THEN none of it reached either client; a properly signed post does
    assert (await raw_post(stack, connection_id, b"genuine"))[0] == 200
    assert await asyncio.wait_for(ws.recv(), 5) == "genuine"
    await ws.close()
    await other_ws.close()


MANAGE = "execute-api:ManageConnections"


async def test_management_calls_are_authorised_by_the_callers_role(launch: Launch) -> None:
    # GIVEN a fan-out role that may POST to connections but not DELETE them, and a role with no such grant
    principals = Principals("123456789012")
    stage_arn = "arn:aws:execute-api:us-east-1:123456789012:qtlocalapi/local"
    poster = principals.register_function(
        "quanttrade-fanout",
        "FanoutRole",
        [{"Statement": [{"Effect": "Allow", "Action": MANAGE, "Resource": f"{stage_arn}/POST/@connections/*"}]}],
    )
    outsider = principals.register_function(
        "quanttrade-connect",
        "ConnectRole",
        [{"Statement": [{"Effect": "Allow", "Action": "dynamodb:*", "Resource": "*"}]}],
    )
    stack = await launch(principals=principals)
    ws, connection_id = await stack.connect()

    def management(credentials: Credentials) -> Any:
        return boto3.client(
            "apigatewaymanagementapi",
            endpoint_url=stack.gateway.management_endpoint,
            region_name="us-east-1",
            aws_access_key_id=credentials.access_key_id,
            aws_secret_access_key=credentials.secret_key,
            aws_session_token=credentials.session_token,
            config=Config(retries={"total_max_attempts": 1}),
        )

    # WHEN the fan-out role posts THEN the client gets it
    fanout = management(poster.credentials)
    await asyncio.to_thread(fanout.post_to_connection, ConnectionId=connection_id, Data=b"allowed")
    assert await asyncio.wait_for(ws.recv(), 5) == "allowed"
    # WHEN it tries to DELETE the connection THEN API Gateway's AccessDenied names the action and resource
    with pytest.raises(ClientError) as denied:
        await asyncio.to_thread(fanout.delete_connection, ConnectionId=connection_id)
    error = denied.value.response
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert error["Error"]["Code"] == "AccessDeniedException"
    assert error["Error"]["Message"] == (
        "User: arn:aws:sts::123456789012:assumed-role/FanoutRole/quanttrade-fanout is not authorized to perform: "
        f"{MANAGE} on resource: {stage_arn}/DELETE/@connections/{connection_id} "
        f"because no identity-based policy allows the {MANAGE} action"
    )
    # AND a role without the grant cannot post at all
    with pytest.raises(ClientError) as refused:
        await asyncio.to_thread(
            management(outsider.credentials).post_to_connection, ConnectionId=connection_id, Data=b"x"
        )
    assert refused.value.response["Error"]["Code"] == "AccessDeniedException"
    # AND the connection is still open: the denied DELETE did nothing
    assert connection_id in stack.gateway.connection_ids
    await ws.close()


async def test_admin_routes_need_a_signature_allowed_to_invoke(launch: Launch) -> None:
    # GIVEN an extra route guarded as the stack guards /admin and /local/stats
    principals = Principals("123456789012")
    reader = principals.register_function(
        "ops",
        "OpsRole",
        [
            {
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Action": "execute-api:Invoke",
                        "Resource": "arn:aws:execute-api:us-east-1:123456789012:qtlocaladmin/$default/GET/stats",
                    }
                ]
            }
        ],
    )
    guard = require_invoke(
        principals, region="us-east-1", account="123456789012", api_id="qtlocaladmin", strip_prefix="/admin"
    )

    async def stats(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    stack = await launch(
        principals=principals,
        extra_routes=[web.get("/admin/stats", guard(stats)), web.get("/admin/secrets", guard(stats))],
    )

    async def get(path: str, headers: dict[str, str]) -> tuple[int, str | None, Any]:
        url = f"{stack.gateway.http_url}{path}"
        async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as response:
            return response.status, response.headers.get("x-amzn-ErrorType"), await response.json(content_type=None)

    url = f"{stack.gateway.http_url}/admin/stats"
    # WHEN unsigned or forged THEN 403
    assert (await get("/admin/stats", {}))[:2] == (403, "ForbiddenException")
    assert (await get("/admin/stats", FORGED))[:2] == (403, "IncompleteSignatureException")
    # WHEN signed by the local administrator THEN it answers
    assert await get("/admin/stats", signed(url, method="GET")) == (200, None, {"ok": True})
    # AND a principal allowed only GET /stats gets that and nothing else
    assert (await get("/admin/stats", signed(url, credentials=reader.credentials, method="GET")))[0] == 200
    other = f"{stack.gateway.http_url}/admin/secrets"
    status, error_type, body = await get("/admin/secrets", signed(other, credentials=reader.credentials, method="GET"))
    assert (status, error_type) == (403, "AccessDeniedException")
    assert (
        "execute-api:Invoke on resource: arn:aws:execute-api:us-east-1:123456789012:qtlocaladmin/$default/GET/secrets"
        in (body["Message"])
    )


async def test_json_nested_deeper_than_the_parser_goes_to_default_instead_of_dropping_the_connection(
    stack: Stack,
) -> None:
    # GIVEN a connected client
    ws, _ = await stack.connect()
    # WHEN it sends a frame nested deeper than the JSON parser recurses (fits in one 32 KB frame)
    deep = "[" * 30000
    await ws.send(deep)
    # THEN the frame reaches $default (where the product answers INVALID_MESSAGE) and the connection stays up
    (event,) = await stack.recorder.wait("$default")
    assert event["body"] == deep
    await ws.send(json.dumps({"action": "echo"}))
    assert (await stack.recorder.wait("echo"))[0]["body"] == '{"action": "echo"}'
    await ws.close()


async def test_no_part_of_a_token_is_logged_even_from_an_over_long_or_encoded_url(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    # GIVEN every log at its most verbose
    caplog.set_level(logging.DEBUG)
    secret = "s3cr3tTOKENvalue"
    targets = [
        f"/?token={secret}{'A' * 9000}",  # longer than aiohttp's request line limit: refused with 400
        f"/?token={secret} HTTP/1.1 junk",  # a malformed request line
        f"/?tok%65n={secret}&x=1",  # the name percent-encoded: still the token parameter
    ]
    for target in targets:
        # WHEN a client sends the request line raw
        reader, writer = await asyncio.open_connection("127.0.0.1", stack.gateway.port)
        writer.write(
            f"GET {target} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        await writer.drain()
        assert await asyncio.wait_for(reader.read(12), 5)
        writer.close()
    await eventually(lambda: "token=REDACTED&x=1" in caplog.text, what="the encoded request's access log line")
    # THEN no log record holds any part of the token, however the request failed
    assert "Error handling request" in caplog.text
    assert secret[:8] not in caplog.text
    assert redact_query("tok%65n=x&Access_Token=y&a=token") == "tok%65n=REDACTED&Access_Token=REDACTED&a=token"


async def test_a_client_that_stops_reading_makes_posts_429_instead_of_blocking(launch: Launch) -> None:
    # GIVEN a connected client that never reads, behind a small receive buffer
    stack = await launch(client_buffer_bytes=64 * 1024)
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", stack.gateway.port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
    writer.write(
        b"GET /?token=mute HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    assert b" 101 " in await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    (event,) = await stack.recorder.wait("$connect")
    connection_id = event["requestContext"]["connectionId"]
    # WHEN the fan-out keeps posting to it
    statuses: list[int] = []
    async with aiohttp.ClientSession() as session:
        url = f"{stack.gateway.http_url}/@connections/{connection_id}"
        while len(statuses) < 2000 and (not statuses or statuses[-1] == 200):
            async with session.post(url, data=b"z" * 100_000, headers=signed(url, b"z" * 100_000)) as response:
                statuses.append(response.status)
    # THEN posts answer promptly and, once the client's buffer is full, with LimitExceeded
    assert statuses[-1] == 429
    writer.transport.abort()
    await stack.recorder.wait("$disconnect")


# ---------------------------------------------------------------- limits and lifecycle


async def test_a_client_frame_over_32_kb_closes_with_1009(stack: Stack) -> None:
    ws, connection_id = await stack.connect()
    # WHEN the client sends a 40 KB message as a single frame, as browsers do
    await ws.send("x" * 40_000)
    # THEN API Gateway's frame limit closes the connection with 1009, and $disconnect says so
    assert (await closed(ws))[0] == 1009
    (event,) = await stack.recorder.wait("$disconnect")
    assert event["requestContext"]["disconnectStatusCode"] == 1009
    assert event["requestContext"]["connectionId"] == connection_id
    assert stack.recorder.events("$default") == []


async def test_a_fragmented_message_up_to_128_kb_is_accepted(stack: Stack) -> None:
    ws, _ = await stack.connect()
    # WHEN the client sends 120 KB split into 30 KB frames
    await ws.send(["a" * 30_000, "b" * 30_000, "c" * 30_000, "d" * 30_000])
    # THEN the handler gets the whole message
    (event,) = await stack.recorder.wait("$default")
    assert len(event["body"]) == 120_000
    assert ws.close_code is None
    await ws.close()


async def test_a_message_over_128_kb_closes_with_1009(stack: Stack) -> None:
    ws, _ = await stack.connect()
    # WHEN the client sends 150 KB in frames each within the frame limit
    await ws.send(["e" * 30_000] * 5)
    # THEN the message limit closes the connection with 1009
    assert (await closed(ws))[0] == 1009
    (event,) = await stack.recorder.wait("$disconnect")
    assert event["requestContext"]["disconnectStatusCode"] == 1009


async def test_without_a_frame_limit_a_single_frame_over_128_kb_still_closes_with_1009(launch: Launch) -> None:
    stack = await launch(max_frame_bytes=None)
    ws, _ = await stack.connect()
    await ws.send("s" * 100_000)
    (event,) = await stack.recorder.wait("$default")
    assert len(event["body"]) == 100_000
    await ws.send("f" * (128 * 1024 + 1))
    assert (await closed(ws))[0] == 1009


async def test_an_idle_connection_is_closed_with_1001_and_disconnected(launch: Launch) -> None:
    # GIVEN a one-second idle timeout
    stack = await launch(idle_timeout=1.0)
    ws, _ = await stack.connect(ping_interval=None)
    # WHEN the client stays silent
    started = time.monotonic()
    # THEN API Gateway's "Going away" close arrives after the timeout, and $disconnect runs
    assert await closed(ws) == (1001, "Going away")
    assert time.monotonic() - started >= 0.9
    (event,) = await stack.recorder.wait("$disconnect")
    APIGatewayWebSocketDisconnectEventModel.model_validate(event)
    assert event["requestContext"]["disconnectStatusCode"] == 1001
    assert event["requestContext"]["disconnectReason"] == "Going away"


async def test_messages_keep_a_connection_from_idling_out(launch: Launch) -> None:
    stack = await launch(idle_timeout=1.0)
    ws, _ = await stack.connect(ping_interval=None)
    # WHEN the client sends a message every 0.2 s for well over the idle timeout
    for _ in range(9):
        await ws.send("still here")
        await asyncio.sleep(0.2)
    # THEN the connection is still open, and only closes once the client goes quiet
    assert ws.close_code is None
    assert (await closed(ws))[0] == 1001


async def test_a_connection_is_closed_at_its_maximum_duration(launch: Launch) -> None:
    # GIVEN a one-second maximum connection duration
    stack = await launch(max_connection_seconds=1.0)
    ws, _ = await stack.connect()

    # WHEN the client stays active
    async def chatter() -> None:
        with pytest.raises(ConnectionClosed):
            while True:
                await ws.send("active")
                await asyncio.sleep(0.1)

    chatting = asyncio.ensure_future(chatter())
    # THEN it is closed anyway, with 1001, and $disconnect runs
    assert await closed(ws) == (1001, "Going away")
    await asyncio.wait_for(chatting, 5)
    (event,) = await stack.recorder.wait("$disconnect")
    assert event["requestContext"]["disconnectStatusCode"] == 1001


async def test_abrupt_client_death_runs_disconnect(stack: Stack) -> None:
    ws, connection_id = await stack.connect()
    # WHEN the client's TCP connection dies without a close frame
    ws.transport.abort()
    # THEN $disconnect runs with 1006 and the connection is gone
    (event,) = await stack.recorder.wait("$disconnect")
    assert event["requestContext"]["disconnectStatusCode"] == 1006
    assert event["requestContext"]["connectionId"] == connection_id
    assert connection_id not in stack.gateway.connection_ids


async def test_stopping_the_gateway_disconnects_every_connection_once(launch: Launch) -> None:
    stack = await launch()
    first, first_id = await stack.connect("one")
    second, second_id = await stack.connect("two")
    # WHEN the gateway stops
    await stack.gateway.stop()
    # THEN every client saw "Going away" and every connection got exactly one $disconnect
    assert (await closed(first))[0] == 1001
    assert (await closed(second))[0] == 1001
    events = stack.recorder.events("$disconnect")
    assert sorted(event["requestContext"]["connectionId"] for event in events) == sorted([first_id, second_id])
    assert {event["requestContext"]["disconnectStatusCode"] for event in events} == {1001}


async def test_stopping_does_not_wait_past_its_budget_for_a_disconnect_that_hangs(launch: Launch) -> None:
    # GIVEN a $disconnect that does not return until released, and a stop budget of half a second
    def hanging_disconnect(functions: Functions) -> dict[str, Any]:
        def disconnect(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
            functions.recorder.record("$disconnect", event, context)
            functions.release.wait(30)
            return {"statusCode": 200}

        return {**functions.handlers(), "$disconnect": disconnect}

    stack = await launch(handlers=hanging_disconnect, stop_disconnect_seconds=0.5)
    client, connection_id = await stack.connect("one")
    # WHEN the gateway stops while that $disconnect is still running
    await asyncio.wait_for(stack.gateway.stop(), timeout=20)
    # THEN the stop returned without it: the client was told "going away" and the $disconnect had started
    assert not stack.functions.release.is_set()
    assert (await closed(client))[0] == 1001
    (event,) = await stack.recorder.wait("$disconnect")
    assert event["requestContext"]["connectionId"] == connection_id


# ---------------------------------------------------------------- HTTP surface


async def test_health_and_readiness(launch: Launch) -> None:
    async def reachable() -> bool:
        return True

    async def unreachable() -> bool:
        raise ConnectionRefusedError("moto is down")

    healthy = await launch(readiness_checks={"dynamodb": reachable})
    broken = await launch(readiness_checks={"dynamodb": reachable, "sqs": unreachable})
    ws, _ = await healthy.connect()
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{healthy.gateway.http_url}/health") as response:
            health = await response.json()
            assert response.status == 200
        assert health["status"] == "ok"
        assert health["connections"] == 1
        assert health["uptime_seconds"] >= 0
        async with session.get(f"{healthy.gateway.http_url}/ready") as response:
            assert response.status == 200
            assert (await response.json())["checks"] == {"dynamodb": "ok"}
        async with session.get(f"{broken.gateway.http_url}/ready") as response:
            assert response.status == 503
            answer = await response.json()
        assert answer["failing"] == ["sqs"]
        assert "moto is down" in answer["checks"]["sqs"]
    await ws.close()


async def test_root_serves_a_page_to_browsers_and_the_websocket_to_clients(launch: Launch, tmp_path: Path) -> None:
    # GIVEN a dashboard mounted at / with a static catch-all and an admin route
    (tmp_path / "index.html").write_text("<h1>dashboard</h1>")
    (tmp_path / "app.js").write_text("console.log('hi')")

    async def index(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(tmp_path / "index.html")

    gateways: list[LocalGateway] = []

    async def stats(request: web.Request) -> web.Response:
        return web.json_response({"connections": len(gateways[0].connection_ids)})

    stack = await launch(root_handler=index, extra_routes=[web.get("/stats", stats), web.static("/", tmp_path)])
    gateways.append(stack.gateway)
    ws, _ = await stack.connect()
    async with aiohttp.ClientSession() as session:
        # THEN a plain GET of / is the page, other files and routes are served, and the gateway's routes still win
        async with session.get(f"{stack.gateway.http_url}/") as response:
            assert await response.text() == "<h1>dashboard</h1>"
        async with session.get(f"{stack.gateway.http_url}/app.js") as response:
            assert await response.text() == "console.log('hi')"
        async with session.get(f"{stack.gateway.http_url}/stats") as response:
            assert await response.json() == {"connections": 1}
        async with session.get(f"{stack.gateway.http_url}/health") as response:
            assert (await response.json())["status"] == "ok"
    await ws.close()


async def test_without_a_root_handler_plain_get_asks_for_an_upgrade(stack: Stack) -> None:
    async with aiohttp.ClientSession() as session, session.get(f"{stack.gateway.http_url}/") as response:
        assert response.status == 426


# ---------------------------------------------------------------- the Lambda runtime


async def test_an_in_process_test_double_still_gets_lambdas_timeout() -> None:
    # GIVEN a Python callable as handler (the in-process mode these gateway tests use; functions named by
    # module run in worker processes, covered by tests/integration/test_lambda_runtime.py)
    release = threading.Event()
    slow = LambdaFunction("slow", lambda event, context: release.wait(5), timeout_seconds=0.3, concurrency=1)
    try:
        # WHEN it overruns its timeout THEN the invocation fails like Lambda's "Task timed out"
        with pytest.raises(LambdaTimeoutError, match=r"^Task timed out after 0\.30 seconds$"):
            await slow.invoke({})
        assert slow.timeouts == 1
    finally:
        release.set()
        slow.shutdown()


# ---------------------------------------------------------------- the Management API's fast path


async def http_exchange(stack: Stack, *requests: bytes, split: bool = False) -> list[bytes]:
    """Raw HTTP/1.1 on one connection: the requests written together (or a byte at a time), one answer each."""
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.gateway.port)
    try:
        data = b"".join(requests)
        if split:
            for index in range(len(data)):
                writer.write(data[index : index + 1])
                await writer.drain()
        else:
            writer.write(data)
        return [await asyncio.wait_for(read_answer(reader), 5) for _ in requests]
    finally:
        writer.close()


async def read_answer(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = re.search(rb"\r\nContent-Length: (\d+)\r\n", head)
    return head + (await reader.readexactly(int(length[1])) if length else b"")


def signed_call(stack: Stack, method: str, path: str, data: bytes = b"", **extra: str) -> bytes:
    """A Management API request as boto3 sends it, signed by the local administrator."""
    url = f"{stack.gateway.http_url}{path}"
    headers = {"Host": f"127.0.0.1:{stack.gateway.port}", **signed(url, data, method=method), **extra}
    if data or method != "GET":
        headers["Content-Length"] = str(len(data))
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return f"{method} {path} HTTP/1.1\r\n{lines}\r\n".encode() + data


def comparable(answer: bytes) -> bytes:
    """An answer without what differs between two identical calls: the date and API Gateway's request id."""
    answer = re.sub(rb"\r\nDate: [^\r]+", b"\r\nDate: -", answer)
    return re.sub(rb"x-amzn-RequestId: [^\r]+", b"x-amzn-RequestId: -", answer)


HEALTH = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"


async def test_the_fast_path_answers_management_calls_byte_for_byte_as_aiohttp_does(stack: Stack) -> None:
    ws, connection_id = await stack.connect()
    wire_id = connection_id.replace("=", "%3D")
    calls = {
        "post": lambda: signed_call(stack, "POST", f"/{stack.gateway.config.stage}/@connections/{wire_id}", b"hi"),
        "post, bare path": lambda: signed_call(stack, "POST", f"/@connections/{wire_id}", b"{}"),
        "post to a gone connection": lambda: signed_call(stack, "POST", "/@connections/AAAAAAAAAAAAAAA%3D", b"x"),
        "another stage": lambda: signed_call(stack, "POST", f"/prod/@connections/{wire_id}", b"x"),
        "unsigned": lambda: f"POST /@connections/{wire_id} HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx".encode(),
        "forged": lambda: signed_call(stack, "POST", f"/@connections/{wire_id}", b"x").replace(
            b"\r\n\r\nx", b"\r\n\r\ny"
        ),
        "get, another stage": lambda: signed_call(stack, "GET", f"/prod/@connections/{wire_id}"),
    }
    for name, call in calls.items():
        handed_over = stack.gateway.fast_path_handovers
        # WHEN the call is the first on its connection, the fast path answers it
        (fast,) = await http_exchange(stack, call())
        assert stack.gateway.fast_path_handovers == handed_over, name
        # AND after a health check the same call goes to aiohttp
        health, through_aiohttp = await http_exchange(stack, HEALTH, call())
        assert stack.gateway.fast_path_handovers == handed_over + 1, name
        assert health.startswith(b"HTTP/1.1 200 OK\r\n")
        # THEN both answers are the same bytes
        assert comparable(fast) == comparable(through_aiohttp), name
    # AND the posts that were allowed arrived, in order: two per path
    assert [await asyncio.wait_for(ws.recv(), 5) for _ in range(4)] == ["hi", "hi", "{}", "{}"]
    (answer,) = await http_exchange(stack, signed_call(stack, "GET", f"/@connections/{wire_id}"))
    assert answer.startswith(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: ")
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["identity"]["sourceIp"] == "127.0.0.1"
    (answer,) = await http_exchange(stack, signed_call(stack, "DELETE", f"/@connections/{wire_id}"))
    assert answer.startswith(b"HTTP/1.1 204 No Content\r\nDate: ")
    assert await closed(ws) == (1000, "")


async def test_pipelined_and_trickled_calls_are_answered_in_order_and_anything_else_goes_to_aiohttp(
    stack: Stack,
) -> None:
    ws, connection_id = await stack.connect()
    path = f"/@connections/{connection_id.replace('=', '%3D')}"
    posts = [signed_call(stack, "POST", path, str(index).encode()) for index in range(3)]
    # WHEN three posts and a health check arrive in one write, and then again a byte at a time
    for split in (False, True):
        answers = await http_exchange(stack, *posts, HEALTH, split=split)
        # THEN each gets its own answer in order, and the health check is served by aiohttp on the same connection
        assert [answer.split(b"\r\n", 1)[0] for answer in answers] == [b"HTTP/1.1 200 OK"] * 4
        assert json.loads(answers[3].partition(b"\r\n\r\n")[2])["status"] == "ok"
        assert [await asyncio.wait_for(ws.recv(), 5) for _ in range(3)] == ["0", "1", "2"]
    # AND a chunked body, a header the fast path does not take, or an unknown method go to aiohttp as they are
    chunked = signed_call(stack, "POST", path, b"chunk", **{"Transfer-Encoding": "chunked"})
    chunked = chunked.replace(b"Content-Length: 5\r\n", b"").replace(
        b"\r\n\r\nchunk", b"\r\n\r\n5\r\nchunk\r\n0\r\n\r\n"
    )
    handed_over = stack.gateway.fast_path_handovers
    (answer,) = await http_exchange(stack, chunked)
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert await asyncio.wait_for(ws.recv(), 5) == "chunk"
    (answer,) = await http_exchange(stack, signed_call(stack, "PUT", path, b"x"))
    assert answer.startswith(b"HTTP/1.1 405 Method Not Allowed\r\n")
    (answer,) = await http_exchange(stack, b"POST " + path.encode() + b" HTTP/1.1\r\nHost x\r\n\r\n")
    assert answer.split(b"\r\n", 1)[0].endswith(b" 400 Bad Request")
    assert stack.gateway.fast_path_handovers == handed_over + 3
    await ws.close()


async def test_the_writes_of_one_turn_of_the_loop_go_out_together_each_connection_in_order(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    from local.api_gateway.turn_writes import TurnWrites

    written_together: list[int] = []
    flush = TurnWrites.flush

    def counted(self: TurnWrites) -> None:
        written_together.append(len(self._queued))
        flush(self)

    monkeypatch.setattr(TurnWrites, "flush", counted)
    ws, connection_id = await stack.connect()
    path = f"/@connections/{connection_id.replace('=', '%3D')}"
    callers = [await asyncio.open_connection("127.0.0.1", stack.gateway.port) for _ in range(20)]
    # WHEN twenty callers each send two posts at once, as a fan-out's connections do
    for number, (_, writer) in enumerate(callers):
        writer.write(b"".join(signed_call(stack, "POST", path, f"{number}.{n}".encode()) for n in range(2)))
    answers = [[await asyncio.wait_for(read_answer(reader), 5) for _ in range(2)] for reader, _ in callers]
    # THEN each caller gets an answer per post, on its own connection
    assert [[answer.split(b"\r\n", 1)[0] for answer in pair] for pair in answers] == [[b"HTTP/1.1 200 OK"] * 2] * 20
    # AND every post arrived, each caller's in the order it sent them
    received = [await asyncio.wait_for(ws.recv(), 5) for _ in range(40)]
    for number in range(20):
        sent_by_caller = [message for message in received if message.split(".")[0] == str(number)]
        assert sent_by_caller == [f"{number}.0", f"{number}.1"]
    # AND the answers and frames of one turn of the loop were written together, not one by one
    assert sum(written_together) == 80
    assert max(written_together) >= 20, written_together
    for _, writer in callers:
        writer.close()
    await ws.close()


async def test_a_route_response_or_a_close_goes_after_the_frames_posted_before_it(stack: Stack) -> None:
    from local.api_gateway.management_api import text_frame

    ws, connection_id = await stack.connect()
    # Only from inside the gateway can a write be made in the same turn as a queued frame: reach in for it.
    connection = stack.gateway._stage.connections[connection_id]
    assert connection.ws is not None and connection.transport is not None
    writes = stack.gateway._writes
    # WHEN a route's response is sent in the same turn as a frame posted before it, still held for the turn's end
    writes.write(connection.transport, text_frame(b"posted"))
    await connection.ws.send_str("route response")
    # THEN the posted frame arrives first
    assert [await asyncio.wait_for(ws.recv(), 5) for _ in range(2)] == ["posted", "route response"]
    # AND likewise a close: the frame posted before it is not lost behind it
    writes.write(connection.transport, text_frame(b"last words"))
    await connection.ws.close(code=1000, message=b"bye")
    assert await asyncio.wait_for(ws.recv(), 5) == "last words"
    assert await closed(ws) == (1000, "bye")


async def test_a_post_and_a_delete_that_arrive_together_deliver_the_post_before_the_close(stack: Stack) -> None:
    ws, connection_id = await stack.connect()
    path = f"/@connections/{connection_id.replace('=', '%3D')}"
    poster, closer = [await asyncio.open_connection("127.0.0.1", stack.gateway.port) for _ in range(2)]
    # WHEN a post and a DELETE of the same connection arrive in one turn of the gateway's loop, the post first
    poster[1].write(signed_call(stack, "POST", path, b"last"))
    closer[1].write(signed_call(stack, "DELETE", path))
    posted = await asyncio.wait_for(read_answer(poster[0]), 5)
    deleted = await asyncio.wait_for(read_answer(closer[0]), 5)
    # THEN the post was taken, and its frame reached the client before the close did
    assert posted.startswith(b"HTTP/1.1 200 OK\r\n") and deleted.startswith(b"HTTP/1.1 204 No Content\r\n")
    assert await asyncio.wait_for(ws.recv(), 5) == "last"
    assert await closed(ws) == (1000, "")
    for _, writer in (poster, closer):
        writer.close()


async def test_stopping_closes_the_fast_paths_connections_and_drops_a_call_still_held(launch: Launch) -> None:
    stack = await launch()
    ws, connection_id = await stack.connect()
    idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", stack.gateway.port)
    idle_writer.write(signed_call(stack, "POST", "/@connections/AAAAAAAAAAAAAAA%3D", b"x"))
    assert (await asyncio.wait_for(read_answer(idle_reader), 5)).startswith(b"HTTP/1.1 410 Gone\r\n")
    held_reader, held_writer = await asyncio.open_connection("127.0.0.1", stack.gateway.port)
    stack.gateway.add_management_fault("delay", delay=60.0)
    held_writer.write(signed_call(stack, "POST", f"/@connections/{connection_id.replace('=', '%3D')}", b"late"))

    def answering() -> list[asyncio.Task[Any]]:
        return [task for task in asyncio.all_tasks() if "FastPathConnection._answer" in repr(task.get_coro())]

    await eventually(answering, what="the post to be held by the delay")
    # WHEN the gateway stops with one connection idle and one call held
    await asyncio.wait_for(stack.gateway.stop(), 10)
    # THEN both connections are closed, the held call is dropped rather than left running, and nothing arrived
    assert await asyncio.wait_for(idle_reader.read(), 5) == b""
    assert await asyncio.wait_for(held_reader.read(), 5) == b""
    await eventually(lambda: not answering(), what="the held call to end")
    assert await closed(ws) == (1001, "Going away")
    idle_writer.close()
    held_writer.close()


async def test_a_connection_idle_past_the_keep_alive_limit_is_closed_even_with_a_request_half_sent(
    launch: Launch, monkeypatch: pytest.MonkeyPatch
) -> None:
    from local.api_gateway import management_fast_path

    monkeypatch.setattr(management_fast_path, "KEEPALIVE_SECONDS", 0.3)
    stack = await launch()
    half_sent = signed_call(stack, "POST", "/@connections/AAAAAAAAAAAAAAA%3D", b"xyz")[:-2]
    connections = []
    for first in (b"", half_sent):
        reader, writer = await asyncio.open_connection("127.0.0.1", stack.gateway.port)
        writer.write(first)
        connections.append((reader, writer))
    # WHEN neither connection sends anything more, THEN the gateway closes both
    for reader, writer in connections:
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
