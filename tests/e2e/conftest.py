"""Fixtures for end-to-end tests: the whole local stack on free ports, real WebSocket clients over TCP.

    local_stack    the running LocalStack (one per test module, ~1 s to start), on its own loop in a thread
    mint           mint(user="alice", **claims) -> an access token the stack accepts
    connect        await connect(user="alice", token=None, **claims) -> Client (closed after the test)
    publish        publish("MarketData", {...detail...}) -> EventBridge event id, through boto3 `events`
    management     a boto3 `apigatewaymanagementapi` client for the stack's Management API
    connection_row connection_row(connection_id) -> the connection's DynamoDB item, or None

The stack runs in a background thread, so a test's own event loop (pytest-asyncio,
one per test) holds only its clients, and a test that blocks never stalls the gateway.
It lives per module, not per session, because it sets os.environ for the handlers
(as Lambda would): restoring that when a module ends keeps it out of other tests.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from local.cloud.assembly import CloudAssembly
from local.cloud.synth import synthesize
from local.stack.config import StackConfig
from local.stack.in_thread import BackgroundStack
from local.stack.local_stack import LocalStack
from quanttrade_ws import topology

E2E_SECRET = "e2e-secret-of-at-least-thirty-two-bytes"


async def eventually(
    condition: Callable[[], Any] | Callable[[], Awaitable[Any]], timeout: float = 10.0, what: str = "condition"
) -> Any:
    """Poll until `condition()` is truthy (awaiting it if it is a coroutine); its value, or AssertionError."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


def unpack(message: dict[str, Any]) -> list[dict[str, Any]]:
    if message.get("message_type") == "batch":
        return [m for inner in message["payload"]["messages"] for m in unpack(inner)]
    return [message]


class Client:
    """A real `websockets` client with request/response matching and batch unpacking."""

    def __init__(self, ws: ClientConnection, user: str) -> None:
        self.ws = ws
        self.user = user
        self.backlog: list[dict[str, Any]] = []
        self.client_id: str | None = None
        self.session_token: str | None = None

    async def send(self, frame: dict[str, Any] | str) -> None:
        await self.ws.send(frame if isinstance(frame, str) else json.dumps(frame))

    async def request(self, action: str, timeout: float = 10.0, **fields: Any) -> dict[str, Any]:
        """Send an action and return the reply carrying its request_id (a reply or an error)."""
        request_id = f"{action}-{uuid.uuid4().hex[:8]}"
        await self.send({"action": action, "request_id": request_id, **fields})
        return await self.expect(lambda m: m.get("request_id") == request_id, timeout, f"the reply to {action}")

    async def hello(self) -> dict[str, Any]:
        reply = await self.request("hello")
        assert reply["message_type"] == "connect", reply
        self.client_id = reply["payload"]["client_id"]
        self.session_token = reply["payload"]["session_token"]
        return reply

    async def expect(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10.0, what: str = "a message"
    ) -> dict[str, Any]:
        """The first message (batches unpacked) matching `predicate`; others stay in the backlog."""
        for index, message in enumerate(self.backlog):
            if predicate(message):
                return self.backlog.pop(index)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{self.user}: no {what} within {timeout}s; got {self.backlog[-5:]}")
            try:
                frame = await asyncio.wait_for(self.ws.recv(), remaining)
            except TimeoutError:
                continue
            messages = unpack(json.loads(frame))
            for index, message in enumerate(messages):
                if predicate(message):
                    # The rest of a batch is kept for later expectations.
                    self.backlog.extend(messages[index + 1 :])
                    return message
                self.backlog.append(message)

    async def closed(self, timeout: float = 10.0) -> int | None:
        """Wait until the server closes the connection; its close code."""
        try:
            async with asyncio.timeout(timeout):
                async for frame in self.ws:
                    self.backlog.extend(unpack(json.loads(frame)))
        except websockets.ConnectionClosed:
            pass
        return self.ws.close_code


@pytest.fixture(scope="session")
def assembly() -> CloudAssembly:
    """The synthesized template the stacks of these tests run, built once per session: on a fresh clone the
    synthesis, the layers and their byte code take longer than a stack's start may."""
    return synthesize()


@pytest.fixture(scope="module")
def local_stack(assembly: CloudAssembly) -> Iterator[LocalStack]:
    background = BackgroundStack(
        StackConfig(
            assembly=assembly,
            gateway_port=0,
            moto_port=0,
            jwt_secret=E2E_SECRET,
            sweep_interval=None,
            simulator=False,
            connect_rate_per_second=None,
            # A record that fan-out fails holds its FIFO group back until the visibility timeout, as on AWS;
            # 3 s instead of 60 s keeps such retries within a test's patience.
            queue_visibility_timeout=3,
        )
    )
    stack = background.start()
    yield stack
    background.stop()


@pytest.fixture(scope="module")
def mint(local_stack: LocalStack) -> Callable[..., str]:
    def mint(user: str = "alice", **claims: Any) -> str:
        return local_stack.token(user, **claims)

    return mint


@pytest.fixture
async def connect(local_stack: LocalStack, mint: Callable[..., str]) -> AsyncIterator[Callable[..., Awaitable[Client]]]:
    clients: list[Client] = []

    async def connect(user: str = "alice", token: str | None = None, **claims: Any) -> Client:
        token = token if token is not None else mint(user, **claims)
        ws = await websockets.connect(f"{local_stack.websocket_url}?token={token}", open_timeout=10, max_size=None)
        client = Client(ws, user)
        clients.append(client)
        return client

    yield connect
    for client in clients:
        await client.ws.close()


@pytest.fixture(scope="module")
def publish(local_stack: LocalStack) -> Callable[[str, dict[str, Any]], str]:
    events = local_stack.client("events")
    sources = {source.detail_type: source.source for source in topology.SOURCES}

    def publish(detail_type: str, detail: dict[str, Any]) -> str:
        response = events.put_events(
            Entries=[
                {
                    "Source": sources[detail_type],
                    "DetailType": detail_type,
                    "Detail": json.dumps(detail),
                    "EventBusName": local_stack.event_bus_name,
                }
            ]
        )
        assert response["FailedEntryCount"] == 0, response
        return str(response["Entries"][0]["EventId"])

    return publish


@pytest.fixture(scope="module")
def management(local_stack: LocalStack) -> Any:
    return local_stack.client("apigatewaymanagementapi")


@pytest.fixture(scope="module")
def connection_row(local_stack: LocalStack) -> Callable[[str], dict[str, Any] | None]:
    dynamodb = local_stack.client("dynamodb")
    assert local_stack.settings is not None
    table = local_stack.settings.connections_table

    def connection_row(connection_id: str) -> dict[str, Any] | None:
        item = dynamodb.get_item(TableName=table, Key={"pk": {"S": connection_id}}, ConsistentRead=True).get("Item")
        return dict(item) if item else None

    return connection_row
