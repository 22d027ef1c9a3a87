"""The realistic load: subscribed clients connected in waves, a steady feed, steady pings, a burst of connects."""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from bench.soak.clients import REPLY_TIMEOUT, HeldClient, Tally, count_refusal, failure_kind, open_client, token_for

SYMBOLS = ("SOAKA", "SOAKB", "SOAKC", "SOAKD")
CONNECT_WAVE = 200
CONNECT_RATE_LIMIT = 500  # the gateway's default new connections per second (API Gateway's quota)
SETUP_DEADLINE = 600.0


async def connect_held(url: str, count: int, tally: Tally) -> tuple[list[HeldClient], dict[str, Any]]:
    """Connect and subscribe `count` clients in concurrent waves, never faster than the gateway's connect quota."""
    held: list[HeldClient] = []
    failures: Counter[str] = Counter()
    started = time.monotonic()
    index = 0
    while len(held) < count and time.monotonic() - started < SETUP_DEADLINE:
        wave_started = time.monotonic()
        size = min(CONNECT_WAVE, count - len(held))
        clients = [
            HeldClient(index + i, f"market_data:{SYMBOLS[(index + i) % len(SYMBOLS)]}", tally) for i in range(size)
        ]
        index += size
        results = await asyncio.gather(*(client.start(url) for client in clients), return_exceptions=True)
        for client, result in zip(clients, results, strict=True):
            if isinstance(result, BaseException):
                failures[failure_kind(result)] += 1
            else:
                held.append(client)
        # A wave must not open more connections than one second of the quota allows.
        minimum = size / (CONNECT_RATE_LIMIT * 0.9)
        await asyncio.sleep(max(0.0, minimum - (time.monotonic() - wave_started)))
    seconds = time.monotonic() - started
    return held, {
        "clients": len(held),
        "seconds": round(seconds, 1),
        "per_second": round(len(held) / seconds, 1) if seconds else None,
        "failures": dict(failures),
    }


async def feed(
    events: Any,
    bus: str,
    rate: float,
    until: float,
    published: Counter[str],
    published_at: dict[str, float],
    failures: Counter[str],
) -> None:
    """MarketData events at a steady rate by the clock (a late tick is sent at once, not skipped)."""
    from quanttrade_ws import topology

    loop = asyncio.get_running_loop()
    source = next(s.source for s in topology.SOURCES if s.detail_type == "MarketData")
    rng = random.Random(7)
    prices = dict.fromkeys(SYMBOLS, 100.0)
    interval = 1.0 / rate
    start = time.monotonic()
    tick = 0
    while True:
        due = start + tick * interval
        if due >= until:
            return
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        symbol = SYMBOLS[tick % len(SYMBOLS)]
        tick += 1
        prices[symbol] = max(1.0, prices[symbol] * (1 + rng.gauss(0, 0.001)))
        detail = {
            "symbol": symbol,
            "price": round(prices[symbol], 4),
            "bid": round(prices[symbol] - 0.01, 4),
            "ask": round(prices[symbol] + 0.01, 4),
            "volume": float(rng.randint(1, 50) * 100),
            "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        }
        entry = {
            "Source": source,
            "DetailType": "MarketData",
            "Detail": json.dumps(detail),
            "EventBusName": bus,
        }

        def put(entry: dict[str, Any] = entry) -> tuple[float, Any]:
            return time.time(), events.put_events(Entries=[entry])

        try:
            sent_at, response = await loop.run_in_executor(None, put)
        except Exception as error:
            failures[type(error).__name__] += 1
            continue
        if response.get("FailedEntryCount"):
            failures[str(response["Entries"][0].get("ErrorCode"))] += 1
        else:
            published[f"market_data:{symbol}"] += 1
            published_at[str(response["Entries"][0]["EventId"])] = sent_at


async def pinger(held: list[HeldClient], interval: float, until: float) -> None:
    """Every held client pings once per `interval`, spread evenly so the load is steady."""
    if not held or interval <= 0:
        return
    step = interval / len(held)
    next_at = time.monotonic()
    while True:
        for client in held:
            next_at += step
            if next_at >= until:
                return
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            await client.ping()


async def burst(url: str, count: int, tally: Tally, kept: list[Any]) -> dict[str, Any]:
    """`count` connects launched within one second; each that gets in pings once and is held."""
    answered = 0

    async def one(index: int) -> bool:
        nonlocal answered
        try:
            ws = await open_client(url, token_for(f"burst-{index:04d}-{os.urandom(3).hex()}"))
        except Exception as error:
            count_refusal(error, tally)
            return False
        kept.append(ws)
        try:
            await ws.send(json.dumps({"action": "ping", "request_id": "burst"}))
            while True:
                reply = json.loads(await asyncio.wait_for(ws.recv(), REPLY_TIMEOUT))
                if reply.get("request_id") == "burst":
                    answered += reply.get("message_type") == "pong"
                    break
        except Exception as error:
            tally.other_failures[f"no_pong_{type(error).__name__}"] += 1
        return True

    started = time.monotonic()
    tasks = []
    waves = 10
    for wave in range(waves):
        # Spread over one second: 10 waves, 100 ms apart.
        await asyncio.sleep(max(0.0, started + wave / waves - time.monotonic()))
        tasks += [asyncio.create_task(one(wave * count // waves + i)) for i in range(count // waves)]
    launched = time.monotonic() - started
    results = await asyncio.gather(*tasks)
    return {
        "launched": len(tasks),
        "launch_seconds": round(launched, 2),
        "admitted": sum(results),
        "answered_ping": answered,
        "all_admitted_after_seconds": round(time.monotonic() - started, 1),
    }
