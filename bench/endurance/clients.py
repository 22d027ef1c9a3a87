"""The endurance benchmark's clients of the running stack: tokens, WebSocket subscribers, a publisher."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

from bench.endurance.dev_stack import WS, stack_client, stack_outputs

KEEP_ALIVE_SECONDS = 240.0


class Tokens:
    """Access tokens for the running stack, minted with the key its secret holds (as `python -m local token`)."""

    def __init__(self) -> None:
        outputs = stack_outputs()
        secrets = stack_client("secretsmanager", outputs)
        self.key = secrets.get_secret_value(SecretId=outputs["LocalSigningKeySecretArn"])["SecretString"]

    def mint(self, user: str) -> str:
        from local.tokens import mint_token

        # One user per client: the service limits new connections per user and minute.
        return mint_token(self.key, user, expires_in=86400)


def unpack(message: Any) -> list[dict[str, Any]]:
    if not isinstance(message, dict):
        return []
    if message.get("message_type") == "batch":
        inner = (message.get("payload") or {}).get("messages")
        return [m for item in inner or () for m in unpack(item)]
    return [message]


@dataclass
class Subscriber:
    """One WebSocket client: its receipts by stream, and when each event id arrived."""

    streams: list[dict[str, Any]]
    token: str
    counts: dict[str, int] = field(default_factory=dict)
    arrivals: dict[str, float] = field(default_factory=dict)
    closed_by_server: bool = False
    connection: Any = None
    reader: asyncio.Task[None] | None = None
    keeper: asyncio.Task[None] | None = None
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def open(self, timeout: float = 60.0) -> None:
        import websockets

        self.connection = await websockets.connect(
            f"{WS}?token={self.token}", open_timeout=timeout, ping_interval=20, max_queue=None
        )
        await self.connection.send(json.dumps({"action": "subscribe", "streams": self.streams}))
        while True:
            reply = json.loads(await asyncio.wait_for(self.connection.recv(), timeout))
            if reply.get("message_type") == "subscribe":
                break
            if reply.get("message_type") == "error":
                raise RuntimeError(f"subscribe refused: {reply.get('payload')}")
        self.reader = asyncio.get_running_loop().create_task(self._read())
        self.keeper = asyncio.get_running_loop().create_task(self._keep_alive())

    async def _keep_alive(self) -> None:
        # API Gateway closes a connection after 10 minutes without a message from the client (WebSocket
        # pings do not count), so a long-lived client sends the protocol's ping, as the product's clients do.
        with contextlib.suppress(Exception):
            while True:
                await asyncio.sleep(KEEP_ALIVE_SECONDS)
                await self.connection.send(json.dumps({"action": "ping"}))

    async def _read(self) -> None:
        import websockets

        try:
            async for frame in self.connection:
                now = time.time()
                for item in unpack(json.loads(frame)):
                    stream = item.get("stream")
                    if not isinstance(stream, str):
                        continue
                    self.counts[stream] = self.counts.get(stream, 0) + 1
                    event_id = (item.get("payload") or {}).get("event_id")
                    if isinstance(event_id, str):
                        self.arrivals[event_id] = now
                        self.arrived.set()
        except websockets.ConnectionClosed:
            pass
        self.closed_by_server = True

    def total(self) -> int:
        return sum(self.counts.values())

    async def wait_for(self, event_id: str, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        while event_id not in self.arrivals:
            self.arrived.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), remaining)
        return self.arrivals[event_id]

    async def close(self) -> None:
        if self.connection is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.connection.close(), 5)
        if self.keeper is not None:
            self.keeper.cancel()
        if self.reader is not None:
            self.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.reader


class Publisher:
    """PutEvents of MarketData for one symbol, on the bus the stack announces, through its AWS endpoint."""

    def __init__(self) -> None:
        outputs = stack_outputs()
        self.bus = outputs["EventBusName"]
        self.client = stack_client("events", outputs)
        self.sequence = 0

    def publish(self, symbol: str) -> tuple[str, float]:
        """Puts one tick; returns (event id the service will carry, the time right before the call)."""
        from datetime import UTC, datetime

        from quanttrade_ws import topology

        self.sequence += 1
        price = round(100 + self.sequence * 0.01, 2)
        detail = {
            "symbol": symbol,
            "price": price,
            "bid": round(price - 0.01, 2),
            "ask": round(price + 0.01, 2),
            "volume": 1000.0 + self.sequence,
            "change": 0.1,
            "change_percent": 0.1,
            "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        }
        source = next(s.source for s in topology.SOURCES if s.detail_type == "MarketData")
        sent = time.time()
        reply = self.client.put_events(
            Entries=[
                {"Source": source, "DetailType": "MarketData", "Detail": json.dumps(detail), "EventBusName": self.bus}
            ]
        )
        return reply["Entries"][0]["EventId"], sent
