"""The benchmark's WebSocket clients, all in this process: each reads in its own task and records arrival times."""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

SYMBOL = "BENCH"
STREAM = f"market_data:{SYMBOL}"
SUBSCRIBE = {"action": "subscribe", "streams": [{"stream_type": "market_data", "symbol": SYMBOL}]}
CONNECT_WAVE = 200


@dataclass
class Arrivals:
    """Receipt times per event id, and a wake-up when an event has reached everyone it should."""

    expected: int = 0
    times: dict[str, list[float]] = field(default_factory=dict)
    complete: dict[str, asyncio.Event] = field(default_factory=dict)
    frame_bytes: dict[str, int] = field(default_factory=dict)

    def expect(self, event_id: str) -> asyncio.Event:
        done = self.complete.setdefault(event_id, asyncio.Event())
        if len(self.times.get(event_id, ())) >= self.expected:
            done.set()
        return done

    def record(self, frame: str | bytes, now: float) -> None:
        try:
            message = json.loads(frame)
        except ValueError:
            return
        if not isinstance(message, dict):
            return
        for item in _unpack(message):
            if item.get("stream") != STREAM:
                continue
            event_id = (item.get("payload") or {}).get("event_id")
            if not isinstance(event_id, str):
                continue
            arrived = self.times.setdefault(event_id, [])
            arrived.append(now)
            if event_id not in self.frame_bytes:
                self.frame_bytes[event_id] = len(frame.encode() if isinstance(frame, str) else frame)
            if len(arrived) >= self.expected:
                done = self.complete.get(event_id)
                if done is not None:
                    done.set()


def _unpack(message: dict[str, Any]) -> list[dict[str, Any]]:
    if message.get("message_type") == "batch":
        inner = (message.get("payload") or {}).get("messages")
        if isinstance(inner, list):
            return [m for item in inner if isinstance(item, dict) for m in _unpack(item)]
    return [message]


class ClientPool:
    """WebSocket clients of one server, each reading in its own task and recording arrivals."""

    def __init__(
        self,
        url: str,
        arrivals: Arrivals,
        *,
        subscribe: bool,
        token_secret: str | None = None,
        subscribe_frame: dict[str, Any] | None = None,
    ) -> None:
        self.url = url
        self.arrivals = arrivals
        self.subscribe = subscribe
        self.subscribe_frame = subscribe_frame or SUBSCRIBE  # what each client sends, when it subscribes
        self.token_secret = token_secret
        self.connections: list[Any] = []
        self.readers: list[asyncio.Task[None]] = []
        self.refusals: dict[str, int] = {}
        self.closed_early = 0

    async def grow(self, total: int, wave: int = CONNECT_WAVE, attempts: int = 3) -> dict[str, Any]:
        """Connect (and subscribe) until `total` clients are open, in concurrent waves; the time it took."""
        started = time.perf_counter()
        wave_seconds: list[float] = []
        for _ in range(attempts):
            missing = total - len(self.connections)
            if missing <= 0:
                break
            for start in range(0, missing, wave):
                count = min(wave, missing - start)
                began = time.perf_counter()
                index = len(self.connections)
                results = await asyncio.gather(
                    *(self._open(index + offset) for offset in range(count)), return_exceptions=True
                )
                for result in results:
                    if isinstance(result, BaseException):
                        kind = type(result).__name__
                        self.refusals[kind] = self.refusals.get(kind, 0) + 1
                    else:
                        self._adopt(result)
                wave_seconds.append(time.perf_counter() - began)
        seconds = time.perf_counter() - started
        return {
            "clients": len(self.connections),
            "seconds": round(seconds, 2),
            "per_second": round(len(self.connections) / seconds, 1) if seconds > 0 else None,
            "slowest_wave_seconds": round(max(wave_seconds), 2) if wave_seconds else 0.0,
            "refusals": dict(self.refusals),
        }

    async def _open(self, index: int) -> Any:
        from websockets.asyncio.client import connect

        url = self.url
        if self.token_secret is not None:
            from local.tokens import mint_token

            # One user per client: the service limits new connections per user and minute.
            url = f"{url}?token={mint_token(self.token_secret, f'bench-{index:05d}-{os.urandom(3).hex()}')}"
        connection = await connect(url, open_timeout=120, close_timeout=5, max_size=None, ping_interval=None)
        try:
            if self.subscribe:
                request_id = f"sub-{index}"
                await connection.send(json.dumps({**self.subscribe_frame, "request_id": request_id}))
                while True:
                    reply = json.loads(await asyncio.wait_for(connection.recv(), 120))
                    if reply.get("request_id") == request_id:
                        if reply.get("message_type") != "subscribe":
                            raise RuntimeError(f"subscribe refused: {reply.get('payload')}")
                        break
        except BaseException:
            await connection.close()
            raise
        return connection

    def _adopt(self, connection: Any) -> None:
        self.connections.append(connection)
        self.readers.append(asyncio.create_task(self._read(connection)))

    async def _read(self, connection: Any) -> None:
        record = self.arrivals.record
        try:
            async for frame in connection:
                record(frame, time.time())
        except Exception:
            pass
        self.closed_early += 1

    async def close(self) -> None:
        for reader in self.readers:
            reader.cancel()
        for start in range(0, len(self.connections), 500):
            await asyncio.gather(*(c.close() for c in self.connections[start : start + 500]), return_exceptions=True)
        self.connections.clear()
        self.readers.clear()
