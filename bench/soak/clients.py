"""The soak's clients: a token per user, a tally of outcomes, and the subscribed clients held for the whole run."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from bench.stack_server import SECRET

REPLY_TIMEOUT = 30.0
OPEN_TIMEOUT = 60.0


def token_for(user: str, **claims: Any) -> str:
    from local.tokens import mint_token

    return mint_token(SECRET, user, **claims)


def unpack(message: Any) -> list[dict[str, Any]]:
    if not isinstance(message, dict):
        return []
    if message.get("message_type") == "batch":
        inner = (message.get("payload") or {}).get("messages")
        if isinstance(inner, list):
            return [m for item in inner for m in unpack(item)]
    return [message]


@dataclass
class Tally:
    """Outcomes by population (held, burst, abusive): close codes, error codes, HTTP refusals."""

    close_codes: Counter[str] = field(default_factory=Counter)
    error_codes: Counter[str] = field(default_factory=Counter)
    http_refusals: Counter[str] = field(default_factory=Counter)
    other_failures: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {
            "close_codes": dict(self.close_codes),
            "error_codes": dict(self.error_codes),
            "http_refusals": dict(self.http_refusals),
            "other_failures": dict(self.other_failures),
        }


def count_refusal(error: BaseException, tally: Tally) -> None:
    from websockets.exceptions import InvalidStatus

    if isinstance(error, InvalidStatus):
        tally.http_refusals[str(error.response.status_code)] += 1
    else:
        tally.other_failures[type(error).__name__] += 1


def failure_kind(error: BaseException) -> str:
    from websockets.exceptions import InvalidStatus

    if isinstance(error, InvalidStatus):
        return f"http_{error.response.status_code}"
    if isinstance(error, RuntimeError) and str(error).startswith("subscribe refused"):
        return str(error)
    return type(error).__name__


async def open_client(url: str, token: str | None) -> Any:
    from websockets.asyncio.client import connect

    target = url if token is None else f"{url}?token={token}"
    return await connect(target, open_timeout=OPEN_TIMEOUT, close_timeout=5, max_size=None, ping_interval=None)


class HeldClient:
    """A subscribed client held for the whole run: what it received, by stream and seq."""

    def __init__(self, index: int, stream: str, tally: Tally) -> None:
        self.index = index
        self.stream = stream
        self.tally = tally
        self.ws: Any = None
        self.seqs: list[int] = []
        self.arrivals: list[tuple[str, float]] = []  # (event id, time.time() on receipt)
        self.pings = 0
        self.pongs = 0
        self.closed = False
        self.reader: asyncio.Task[None] | None = None

    async def start(self, url: str) -> None:
        self.ws = await open_client(url, token_for(f"soak-{self.index:05d}-{os.urandom(3).hex()}"))
        try:
            symbol = self.stream.split(":", 1)[1]
            spec = {"stream_type": "market_data", "symbol": symbol}
            await self.ws.send(json.dumps({"action": "subscribe", "streams": [spec], "request_id": "sub"}))
            while True:
                reply = json.loads(await asyncio.wait_for(self.ws.recv(), REPLY_TIMEOUT))
                if reply.get("request_id") == "sub":
                    if reply.get("message_type") != "subscribe":
                        code = (reply.get("payload") or {}).get("error_code", "unknown")
                        raise RuntimeError(f"subscribe refused: {code}")
                    break
                self._take(reply)
        except BaseException:
            await self.ws.close()
            raise
        self.reader = asyncio.create_task(self._read())

    def _take(self, message: Any) -> None:
        for item in unpack(message):
            kind = item.get("message_type")
            if kind == "pong":
                self.pongs += 1
            elif kind == "error":
                self.tally.error_codes[str((item.get("payload") or {}).get("error_code"))] += 1
            elif item.get("stream") == self.stream and isinstance(item.get("seq"), int):
                self.seqs.append(item["seq"])
                event_id = (item.get("payload") or {}).get("event_id")
                if isinstance(event_id, str):
                    self.arrivals.append((event_id, time.time()))

    async def _read(self) -> None:
        try:
            async for frame in self.ws:
                try:
                    self._take(json.loads(frame))
                except ValueError:
                    self.tally.other_failures["unparseable_frame"] += 1
        except Exception as error:
            self.tally.other_failures[f"reader_{type(error).__name__}"] += 1
        self.closed = True
        self.tally.close_codes[str(self.ws.close_code)] += 1

    async def ping(self) -> None:
        if self.closed:
            return
        self.pings += 1
        with contextlib.suppress(Exception):
            await self.ws.send(json.dumps({"action": "ping", "request_id": f"p{self.pings}"}))
