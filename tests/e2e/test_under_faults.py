"""The whole stack under AWS's own failures, injected at rates (`python -m local dev --faults ...`).

200 clients subscribe, join, leave and resume while 1,000 events are
published, with 5% of the functions' DynamoDB calls, 5% of Management API
calls and 2% of their SQS calls failing as AWS fails them (throttling,
conflicts, 500s, 429s). Nothing may be lost or invented: no limit or capacity
error that the limits do not explain, counters equal to the rows they count,
every event at every subscriber exactly once after de-duplication by
(stream, seq), and nothing in any dead-letter queue.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from local.cloud.assembly import CloudAssembly
from local.stack.config import StackConfig
from local.stack.in_thread import BackgroundStack
from local.stack.local_stack import LocalStack
from tests.e2e.conftest import E2E_SECRET, unpack

pytestmark = pytest.mark.e2e

CLIENTS = 200
EVENTS = 1_000
RESUMING = 20  # clients that drop their connection mid-stream and resume on a new one
SYMBOL = "FLTQ"
STREAM = f"market_data:{SYMBOL}"
FAULTS = {"dynamodb": 0.05, "management": 0.05, "sqs": 0.02}
FALSE_LIMITS = {"SUBSCRIPTION_LIMIT", "ROOM_LIMIT", "ROOM_FULL"}


@pytest.fixture(scope="module")
def stack(assembly: CloudAssembly) -> Iterator[LocalStack]:
    background = BackgroundStack(
        StackConfig(
            assembly=assembly,
            gateway_port=0,
            moto_port=0,
            jwt_secret=E2E_SECRET,
            sweep_interval=None,
            simulator=False,
            connect_rate_per_second=None,
            dashboard=False,
            queue_visibility_timeout=3,
            faults=FAULTS,
            fault_seed=11,
        )
    )
    yield background.start(timeout=240)
    background.stop(timeout=120)


class Subscriber:
    """One user's client: a reader task files data messages by (stream, seq) and replies by request id."""

    def __init__(self, stack: LocalStack, index: int) -> None:
        self.stack = stack
        self.user = f"fault-user-{index}"
        self.seqs: set[int] = set()
        self.errors: list[dict[str, Any]] = []
        self.session_token: str | None = None
        self._replies: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None

    async def open(self) -> None:
        token = self.stack.token(self.user)
        self._ws = await websockets.connect(f"{self.stack.websocket_url}?token={token}", open_timeout=30, max_size=None)
        self._reader = asyncio.create_task(self._read(self._ws))

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for frame in ws:
                for message in unpack(json.loads(frame)):
                    if message.get("stream") == STREAM and isinstance(message.get("seq"), int):
                        self.seqs.add(message["seq"])
                    if message.get("message_type") == "error":
                        self.errors.append(message)
                    future = self._replies.pop(str(message.get("request_id")), None)
                    if future is not None and not future.done():
                        future.set_result(message)
        except websockets.ConnectionClosed:
            pass

    async def request(self, action: str, **fields: Any) -> dict[str, Any]:
        """The reply to one action; INTERNAL (the service gave up after its retries) is retried as a client would."""
        for _ in range(5):
            request_id = uuid.uuid4().hex
            future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
            self._replies[request_id] = future
            assert self._ws is not None
            await self._ws.send(json.dumps({"action": action, "request_id": request_id, **fields}))
            reply = await asyncio.wait_for(future, 60)
            if reply.get("payload", {}).get("error_code") != "INTERNAL":
                return reply
        return reply

    async def drop(self) -> None:
        """The network goes away: the connection closes without a goodbye from the application."""
        assert self._ws is not None and self._reader is not None
        await self._ws.close()
        await self._reader

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            await self._reader


async def in_waves(coroutines: list[Any], size: int = 25) -> list[Any]:
    results = []
    for start in range(0, len(coroutines), size):
        results += await asyncio.gather(*coroutines[start : start + size])
    return results


def publish(stack: LocalStack, first: int, last: int) -> None:
    events = stack.client("events")
    entries = [
        {
            "Source": "quanttrade.market-data",
            "DetailType": "MarketData",
            "Detail": json.dumps(
                {
                    "symbol": SYMBOL,
                    "price": 100.0 + n / 100,
                    "bid": 99.99 + n / 100,
                    "ask": 100.01 + n / 100,
                    "volume": float(n),
                    "change": 0.01,
                    "change_percent": 0.01,
                    "timestamp": "2026-03-02T14:30:00Z",
                    "sequence": n,
                }
            ),
            "EventBusName": stack.event_bus_name,
        }
        for n in range(first, last + 1)
    ]
    for start in range(0, len(entries), 10):
        answer = events.put_events(Entries=entries[start : start + 10])
        assert answer["FailedEntryCount"] == 0, answer


def counters_match_rows(stack: LocalStack) -> list[str]:
    """Every connection's and room's counters against the rows they count (read past the faults, as admin)."""
    assert stack.settings is not None
    dynamodb = stack.client("dynamodb")
    mismatches = []

    def scan(table: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        for page in dynamodb.get_paginator("scan").paginate(TableName=table, ConsistentRead=True):
            items += page["Items"]
        return items

    subscriptions = scan(stack.settings.subscriptions_table)
    memberships = [m for m in scan(stack.settings.rooms_table) if "connection_id" in m]
    for row in scan(stack.settings.connections_table):
        if row.get("kind", {}).get("S") != "connection":
            continue
        cid = row["pk"]["S"]
        rooms = [m for m in memberships if m["connection_id"]["S"] == cid]
        room_count = int(row.get("room_count", {}).get("N", "0"))
        if room_count != len(rooms):
            mismatches.append(f"{cid}: room_count {room_count}, {len(rooms)} membership rows")
        held = [s for s in subscriptions if s["connection_id"]["S"] == cid]
        data_rooms = [m for m in rooms if m["room"]["S"].startswith(("market_data_", "predictions_", "alerts"))]
        sub_count = int(row.get("sub_count", {}).get("N", "0"))
        if sub_count != len(held) + len(data_rooms):
            mismatches.append(f"{cid}: sub_count {sub_count}, {len(held)} subscriptions + {len(data_rooms)} data rooms")
    return mismatches


def dead_letters(stack: LocalStack) -> int:
    sqs = stack.client("sqs")
    total = 0
    for url in stack.dead_letter_queue_urls():
        attributes = sqs.get_queue_attributes(
            QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        )["Attributes"]
        total += sum(int(value) for value in attributes.values())
    return total


@pytest.mark.timeout(1200)
async def test_two_hundred_clients_lose_nothing_under_five_percent_faults(stack: LocalStack) -> None:
    # GIVEN 200 clients, each subscribed to one stream; a quarter also in a chat room, some of whom leave again
    clients = [Subscriber(stack, i) for i in range(CLIENTS)]
    await in_waves([c.open() for c in clients])
    hellos = await in_waves([c.request("hello") for c in clients])
    for client, hello in zip(clients, hellos, strict=True):
        assert hello["message_type"] == "connect", hello
        client.session_token = hello["payload"]["session_token"]
    subscribed = await in_waves(
        [c.request("subscribe", streams=[{"stream_type": "market_data", "symbol": SYMBOL}]) for c in clients]
    )
    assert all(reply["message_type"] == "subscribe" for reply in subscribed), [
        r for r in subscribed if r["message_type"] != "subscribe"
    ][:3]
    joiners = clients[::4]
    joined = await in_waves([c.request("joinRoom", room=f"desk-{i % 5}") for i, c in enumerate(joiners)])
    assert all(reply["message_type"] == "join_room" for reply in joined), joined[:3]
    left = await in_waves([c.request("leaveRoom", room=f"desk-{i % 5}") for i, c in enumerate(joiners) if i % 2])
    assert all(reply["message_type"] == "leave_room" for reply in left), left[:3]

    # WHEN 1,000 events are published, and 20 clients drop mid-stream and resume on a new connection
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, publish, stack, 1, 300)
    resuming = clients[1::10][:RESUMING]
    await asyncio.gather(*(c.drop() for c in resuming))
    publishing = loop.run_in_executor(None, publish, stack, 301, EVENTS)
    for client in resuming:
        await client.open()
        last_seq = max(client.seqs, default=0)
        resumed = await client.request("resume", session_token=client.session_token, last_seq={STREAM: last_seq})
        assert resumed["message_type"] == "resumed", resumed
    await publishing

    # THEN every client has every event exactly once after de-duplication by (stream, seq)
    published_at = time.monotonic()
    deadline = published_at + 900
    while time.monotonic() < deadline and any(len(c.seqs) < EVENTS for c in clients):
        await asyncio.sleep(1.0)
    missing = {c.user: EVENTS - len(c.seqs) for c in clients if len(c.seqs) < EVENTS}
    assert not missing, f"{len(missing)} clients miss events: {dict(list(missing.items())[:5])}"
    assert all(c.seqs == set(range(1, EVENTS + 1)) for c in clients)
    # AND no limit or capacity error was invented by a failure
    false_limits = [e for c in clients for e in c.errors if e["payload"].get("error_code") in FALSE_LIMITS]
    assert false_limits == []
    # AND the faults really happened
    assert stack.front_door is not None and stack.gateway is not None
    injected = stack.front_door.fault_counts()
    management = stack.gateway.management_fault_counts()
    print(
        f"\n{CLIENTS} clients, {EVENTS} events: all delivered {time.monotonic() - published_at:.0f} s after the last "
        f"publish; injected {json.dumps(injected)}; Management API {json.dumps(management)}"
    )
    assert sum(injected.get("dynamodb", {}).values()) > 0
    assert sum(management.values()) > 0
    # AND every counter equals the rows it counts, and no dead-letter queue holds anything
    assert counters_match_rows(stack) == []
    assert dead_letters(stack) == 0
    await asyncio.gather(*(c.close() for c in clients))
