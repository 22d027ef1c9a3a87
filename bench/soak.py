"""Soak (what `make soak` runs): the local stack held under realistic and abusive load for a while.

    python -m bench.soak [--connections 2000] [--duration 60] [--rate 1] [--ping-interval 30] [--burst 500]

What happens, all on 127.0.0.1 (the stack in a child process, as `bench.end_to_end` runs it):

1. `--connections` clients connect (one user each; the service limits new
   connections per user and minute) and subscribe to one of a few market data
   streams, in concurrent waves that stay under the gateway's 500 connects/s.
2. For `--duration` seconds they are held: each pings every `--ping-interval`
   seconds, and a publisher here puts `--rate` MarketData events per second on
   the bus (round robin over the symbols), steady by the clock.
3. Meanwhile, `--burst` new connections are opened within one second against
   the gateway's default limit of 500 new connections per second (all should
   get in), and a script of abusive clients runs every `--abuse-interval`
   seconds: frames over 32 KB and messages over 128 KB (close 1009), floods
   beyond 100 messages per second (RATE_LIMIT, then the connection is closed),
   invalid JSON and unknown actions, no token (HTTP 401) and bad tokens (HTTP 403), and streams and
   rooms the token does not permit (FORBIDDEN, INVALID_ROOM).
4. The feed stops; once every held client has the last seq of its stream (or
   a deadline passes), messages lost are counted: every seq of its stream from
   the first one it received on must be there, without gaps.

The defaults are about what the local stack carries on the 2-core development
machine, measured: with 2,000 subscribers on 4 streams, 1 event/s (500
deliveries/s) and a ping per client every 30 s (67 messages/s), publish to
receive starts at 1-2 s and the burst and the abusive clients push it to
several seconds, cleared within seconds of the feed stopping; at 2 events/s
with the same pings the fan-out falls further behind every second, even
without burst and abuse, because moto, one Python process answering every
DynamoDB call of every function, is saturated. Nothing was lost either way;
the latency figures (overall and per 10 s of publishing) say how far behind
it was.

Printed and written to bench/soak-results.json with the machine section:
connections held, messages delivered, errors by kind (close codes, error
codes, HTTP refusals), the gateway process's memory at start and end, and
messages lost. Every phase has a deadline, so the run always ends by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import machine
from bench.end_to_end import SECRET, ChildProcess, raise_fd_limit, stack_stats

ROOT = Path(__file__).resolve().parent.parent


RESULTS = ROOT / "bench" / "soak-results.json"
SYMBOLS = ("SOAKA", "SOAKB", "SOAKC", "SOAKD")
CONNECT_WAVE = 200
CONNECT_RATE_LIMIT = 500  # the gateway's default new connections per second (API Gateway's quota)
SETUP_DEADLINE = 600.0
DRAIN_DEADLINE = 120.0
REPLY_TIMEOUT = 30.0
OPEN_TIMEOUT = 60.0


def _token(user: str, **claims: Any) -> str:
    from local.tokens import mint_token

    return mint_token(SECRET, user, **claims)


def _unpack(message: Any) -> list[dict[str, Any]]:
    if not isinstance(message, dict):
        return []
    if message.get("message_type") == "batch":
        inner = (message.get("payload") or {}).get("messages")
        if isinstance(inner, list):
            return [m for item in inner for m in _unpack(item)]
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


def _refusal(error: BaseException, tally: Tally) -> None:
    from websockets.exceptions import InvalidStatus

    if isinstance(error, InvalidStatus):
        tally.http_refusals[str(error.response.status_code)] += 1
    else:
        tally.other_failures[type(error).__name__] += 1


def _failure_kind(error: BaseException) -> str:
    from websockets.exceptions import InvalidStatus

    if isinstance(error, InvalidStatus):
        return f"http_{error.response.status_code}"
    if isinstance(error, RuntimeError) and str(error).startswith("subscribe refused"):
        return str(error)
    return type(error).__name__


async def _open(url: str, token: str | None) -> Any:
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
        self.ws = await _open(url, _token(f"soak-{self.index:05d}-{os.urandom(3).hex()}"))
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
        for item in _unpack(message):
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


# ------------------------------------------------------------------ phases


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
                failures[_failure_kind(result)] += 1
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
            ws = await _open(url, _token(f"burst-{index:04d}-{os.urandom(3).hex()}"))
        except Exception as error:
            _refusal(error, tally)
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


# ------------------------------------------------------------------ abusive clients


async def _expect_close(ws: Any, timeout: float = REPLY_TIMEOUT) -> tuple[int | None, Counter[str]]:
    """Read until the server closes (or `timeout`); the close code (None: still open) and the error codes seen."""
    codes: Counter[str] = Counter()
    with contextlib.suppress(Exception):
        async with asyncio.timeout(timeout):
            async for frame in ws:
                for item in _unpack(json.loads(frame)):
                    if item.get("message_type") == "error":
                        codes[str((item.get("payload") or {}).get("error_code"))] += 1
    if ws.close_code is None:
        await ws.close()
        return None, codes
    return ws.close_code, codes


async def _replies(ws: Any, request_ids: set[str], anonymous: int = 0) -> tuple[dict[str, str], list[str]]:
    """Error code (or message type) of the replies to these requests, and of `anonymous` errors without an id
    (a frame that is not JSON cannot carry one back)."""
    answers: dict[str, str] = {}
    unnamed: list[str] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(REPLY_TIMEOUT):
            while not request_ids <= answers.keys() or len(unnamed) < anonymous:
                for item in _unpack(json.loads(await ws.recv())):
                    payload = item.get("payload") or {}
                    kind = payload.get("error_code") or str(item.get("message_type"))
                    rid = item.get("request_id")
                    if rid in request_ids:
                        answers[rid] = kind
                    elif rid is None and item.get("message_type") == "error":
                        unnamed.append(kind)
    return answers, unnamed


async def abuse_oversized(url: str, size: int) -> dict[str, Any]:
    ws = await _open(url, _token(f"abuse-big-{os.urandom(4).hex()}"))
    # One frame: websockets does not fragment a str message, as browsers do not.
    with contextlib.suppress(Exception):
        await ws.send(json.dumps({"action": "ping", "pad": "x" * size}))
    code, _ = await _expect_close(ws)
    return {"close_code": code}


async def abuse_flood(url: str, messages: int = 300) -> dict[str, Any]:
    ws = await _open(url, _token(f"abuse-flood-{os.urandom(4).hex()}"))
    sent = 0
    with contextlib.suppress(Exception):
        for index in range(messages):
            await ws.send(json.dumps({"action": "ping", "request_id": f"f{index}"}))
            sent += 1
    # The service closes a flooder after its third RATE_LIMIT warning; ten seconds is plenty for that.
    code, codes = await _expect_close(ws, timeout=10.0)
    return {"close_code": code, "error_codes": dict(codes), "sent": sent}


async def abuse_garbage(url: str) -> dict[str, Any]:
    ws = await _open(url, _token(f"abuse-junk-{os.urandom(4).hex()}"))
    await ws.send("{this is not json")
    await ws.send(json.dumps({"action": "launchMissiles", "request_id": "unknown"}))
    await ws.send(json.dumps({"action": "subscribe", "streams": "everything", "request_id": "malformed"}))
    answers, unnamed = await _replies(ws, {"unknown", "malformed"}, anonymous=1)
    await ws.close()
    return {
        "unknown_action": answers.get("unknown"),
        "malformed": answers.get("malformed"),
        "invalid_json": unnamed[0] if unnamed else None,
    }


async def abuse_tokens(url: str) -> dict[str, Any]:
    from local.tokens import mint_token

    candidates = {
        "no_token": None,
        "garbage": "not-a-jwt",
        "expired": _token(f"abuse-old-{os.urandom(4).hex()}", expires_in=-60),
        "wrong_secret": mint_token("a-different-secret-that-is-long-enough", "mallory"),
    }
    outcomes: dict[str, Any] = {}
    for name, token in candidates.items():
        tally = Tally()
        try:
            ws = await _open(url, token)
        except Exception as error:
            _refusal(error, tally)
            outcomes[name] = next(iter(tally.http_refusals), None) or next(iter(tally.other_failures), None)
        else:
            outcomes[name] = "admitted"
            await ws.close()
    return outcomes


async def abuse_forbidden(url: str) -> dict[str, Any]:
    ws = await _open(url, _token(f"abuse-perm-{os.urandom(4).hex()}", permissions=["read:market_data", "rooms:join"]))
    await ws.send(
        json.dumps({"action": "subscribe", "streams": [{"stream_type": "predictions"}], "request_id": "stream"})
    )
    await ws.send(json.dumps({"action": "joinRoom", "room": "admin.ops", "request_id": "admin-room"}))
    await ws.send(json.dumps({"action": "joinRoom", "room": "predictions_AAPL", "request_id": "data-room"}))
    await ws.send(json.dumps({"action": "joinRoom", "room": "no spaces allowed!", "request_id": "bad-room"}))
    answers, _ = await _replies(ws, {"stream", "admin-room", "data-room", "bad-room"})
    await ws.close()
    return answers


EXPECTED = {
    "oversized_frame": {"close_code": 1009},
    "oversized_message": {"close_code": 1009},
    "garbage": {"unknown_action": "UNKNOWN_ACTION", "malformed": "INVALID_MESSAGE", "invalid_json": "INVALID_MESSAGE"},
    # No token: API Gateway refuses before the authorizer (401); a refused token: the authorizer's Deny (403).
    "tokens": {"no_token": "401", "garbage": "403", "expired": "403", "wrong_secret": "403"},
    "forbidden": {
        "stream": "FORBIDDEN",
        "admin-room": "FORBIDDEN",
        "data-room": "FORBIDDEN",
        "bad-room": "INVALID_ROOM",
    },
}


def _flood_as_expected(outcome: dict[str, Any]) -> bool:
    # RATE_LIMIT replies, then the service closes the connection (DELETE @connections: 1000).
    return outcome.get("error_codes", {}).get("RATE_LIMIT", 0) > 0 and outcome.get("close_code") is not None


async def abuse_round(url: str) -> dict[str, Any]:
    scenarios = {
        "oversized_frame": abuse_oversized(url, 40 * 1024),
        "oversized_message": abuse_oversized(url, 130 * 1024),
        "flood": abuse_flood(url),
        "garbage": abuse_garbage(url),
        "tokens": abuse_tokens(url),
        "forbidden": abuse_forbidden(url),
    }
    results = await asyncio.gather(*scenarios.values(), return_exceptions=True)
    return {
        name: (result if not isinstance(result, BaseException) else {"failed": f"{type(result).__name__}: {result}"})
        for name, result in zip(scenarios, results, strict=True)
    }


async def abuser(url: str, interval: float, until: float, rounds: list[dict[str, Any]]) -> None:
    if interval <= 0:
        return
    # A round takes up to ~10 s (a flooder is given that long to be cut off): start none that would overrun.
    while time.monotonic() + 12.0 < until:
        started = time.monotonic()
        rounds.append(await abuse_round(url))
        await asyncio.sleep(max(0.0, min(interval - (time.monotonic() - started), until - time.monotonic())))


def summarise_abuse(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for name in ("oversized_frame", "oversized_message", "flood", "garbage", "tokens", "forbidden"):
        outcomes = [r[name] for r in rounds if name in r]
        if name == "flood":
            good = sum(_flood_as_expected(o) for o in outcomes)
        else:
            good = sum(all(o.get(k) == v for k, v in EXPECTED[name].items()) for o in outcomes)
        observed: Counter[str] = Counter(json.dumps(o, sort_keys=True) for o in outcomes)
        summary[name] = {
            "runs": len(outcomes),
            "as_expected": good,
            "expected": EXPECTED.get(name, "RATE_LIMIT, then closed"),
            "observed": {text: count for text, count in observed.most_common(3)},
        }
    return summary


# ------------------------------------------------------------------ accounting


def messages_lost(held: list[HeldClient], published: dict[str, int]) -> dict[str, Any]:
    """Per open client: every seq of its stream from the first one it received on, with no gaps.

    A hole below the last seq the client holds is lost (a later message got
    through, this one never will); seqs past it that were published but had not
    arrived when the drain deadline passed are counted apart, as late.
    """
    lost = late = duplicates = late_start = checked = 0
    worst: list[tuple[int, int]] = []
    for client in held:
        if client.closed:
            continue
        checked += 1
        last_published = published.get(client.stream, 0)
        if not client.seqs:
            late += last_published
            continue
        received = set(client.seqs)
        duplicates += len(client.seqs) - len(received)
        first, last = min(received), max(received)
        missing = sum(1 for seq in range(first, last + 1) if seq not in received)
        lost += missing
        late += max(0, last_published - last)
        late_start += first > 1
        if missing:
            worst.append((missing, client.index))
    return {
        "messages_lost": lost,
        "messages_late_at_deadline": late,
        "clients_checked": checked,
        "clients_with_gaps": len(worst),
        "worst_gaps": sorted(worst, reverse=True)[:5],
        "duplicates_received": duplicates,
        "clients_whose_first_seq_was_not_1": late_start,
    }


def latencies(held: list[HeldClient], published_at: dict[str, float]) -> dict[str, Any]:
    """Publish-to-receive over every delivered message (the publisher's and the clients' clock are one)."""
    from bench.end_to_end import percentile

    samples = [
        (arrived - published_at[event_id]) * 1000
        for client in held
        for event_id, arrived in client.arrivals
        if event_id in published_at
    ]
    # When the backlog builds matters as much as how big it gets: p50 per 10 s of publishing.
    start = min(published_at.values(), default=0.0)
    windows: dict[int, list[float]] = {}
    for client in held:
        for event_id, arrived in client.arrivals:
            if event_id in published_at:
                sent = published_at[event_id]
                windows.setdefault(int((sent - start) // 10) * 10, []).append((arrived - sent) * 1000)
    return {
        "latency_p50_ms_by_10s_of_publishing": {
            f"{second}s": _round(percentile(values, 0.50)) for second, values in sorted(windows.items())
        },
        "latency_p50_ms": _round(percentile(samples, 0.50)),
        "latency_p99_ms": _round(percentile(samples, 0.99)),
        "latency_max_ms": _round(max(samples) if samples else None),
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


async def drain(held: list[HeldClient], last_seq: dict[str, int], deadline: float) -> float:
    """Wait until every open held client has its stream's last seq and a pong for each ping, or the deadline."""
    started = time.monotonic()
    while time.monotonic() < started + deadline:
        behind = [
            c
            for c in held
            if not c.closed and ((max(c.seqs) if c.seqs else 0) < last_seq.get(c.stream, 0) or c.pongs < c.pings)
        ]
        if not behind:
            break
        await asyncio.sleep(0.25)
    return round(time.monotonic() - started, 1)


def _mib(value: int | None) -> float | None:
    return None if value is None else round(value / 2**20, 1)


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    from bench.end_to_end import _events_client

    raise_fd_limit()
    loop = asyncio.get_running_loop()
    began = time.monotonic()
    options: dict[str, Any] = {"simulator": False}
    # Everything else is `make dev`'s: 500 new connections/s, 10,000 management calls/s, 10 minute idle timeout.
    with ChildProcess("stack", options) as stack:
        url = stack.info["websocket_url"]
        moto_pids = machine.child_pids(stack.pid)
        memory = {"gateway_rss_mib_start": _mib(machine.rss_bytes(stack.pid))}
        memory["moto_rss_mib_start"] = _mib(machine.rss_bytes(moto_pids[0])) if moto_pids else None
        print(f"stack up (pid {stack.pid}); gateway RSS {memory['gateway_rss_mib_start']} MiB", flush=True)

        held_tally, burst_tally = Tally(), Tally()
        held, setup = await connect_held(url, args.connections, held_tally)
        memory["gateway_rss_mib_after_setup"] = _mib(machine.rss_bytes(stack.pid))
        print(f"{setup['clients']} clients connected and subscribed in {setup['seconds']}s {setup}", flush=True)
        # Let the fan-out's audience cache (0.5 s) turn over, so the first event reaches every subscriber.
        await asyncio.sleep(1.0)

        events = await loop.run_in_executor(None, _events_client, stack.info["aws_endpoint_url"])
        published: Counter[str] = Counter()
        published_at: dict[str, float] = {}
        feed_failures: Counter[str] = Counter()
        rounds: list[dict[str, Any]] = []
        burst_clients: list[Any] = []
        hold_started = time.monotonic()
        until = hold_started + args.duration
        stack_cpu_start = machine.cpu_seconds(stack.pid) or 0.0
        moto_cpu_start = (machine.cpu_seconds(moto_pids[0]) or 0.0) if moto_pids else 0.0
        tasks = [
            asyncio.create_task(
                feed(events, stack.info["event_bus_name"], args.rate, until, published, published_at, feed_failures)
            ),
            asyncio.create_task(pinger(held, args.ping_interval, until)),
            asyncio.create_task(abuser(url, args.abuse_interval, until, rounds)),
        ]
        await asyncio.sleep(min(args.burst_after, args.duration / 2))
        print(f"burst of {args.burst} connects", flush=True)
        burst_result = await burst(url, args.burst, burst_tally, burst_clients)
        print(f"burst: {burst_result}", flush=True)
        await asyncio.sleep(max(0.0, until - time.monotonic()))
        results = await asyncio.gather(*tasks, return_exceptions=True)
        task_failures = [f"{type(r).__name__}: {r}" for r in results if isinstance(r, BaseException)]
        hold_seconds = time.monotonic() - hold_started
        stack_cpu = (machine.cpu_seconds(stack.pid) or 0.0) - stack_cpu_start
        moto_cpu = ((machine.cpu_seconds(moto_pids[0]) or 0.0) - moto_cpu_start) if moto_pids else 0.0

        last_seq = {stream: count for stream, count in published.items()}
        observed_last = {}
        for client in held:
            if client.seqs:
                observed_last[client.stream] = max(observed_last.get(client.stream, 0), max(client.seqs))
        drain_seconds = await drain(held, last_seq, DRAIN_DEADLINE)
        memory["gateway_rss_mib_end"] = _mib(machine.rss_bytes(stack.pid))
        memory["moto_rss_mib_end"] = _mib(machine.rss_bytes(moto_pids[0])) if moto_pids else None
        for client in held:
            if client.seqs:
                observed_last[client.stream] = max(observed_last.get(client.stream, 0), max(client.seqs))
        loss = messages_lost(held, last_seq)
        open_held = sum(not c.closed for c in held)
        open_burst = sum(ws.close_code is None for ws in burst_clients)
        delivered = sum(len(c.seqs) for c in held)
        stats = await loop.run_in_executor(None, stack_stats, stack.info["http_url"])

        for client in held:
            if client.reader is not None:
                client.reader.cancel()
        everyone = [c.ws for c in held] + burst_clients
        for start in range(0, len(everyone), 500):
            await asyncio.gather(*(ws.close() for ws in everyone[start : start + 500]), return_exceptions=True)

    abuse = summarise_abuse(rounds)
    return {
        "connections_requested": args.connections,
        "connections_subscribed": setup["clients"],
        "connections_held_to_the_end": open_held,
        "setup_seconds": setup["seconds"],
        "setup_connects_per_second": setup["per_second"],
        "setup_failures": setup["failures"],
        "hold_seconds": round(hold_seconds, 1),
        "events_published": sum(published.values()),
        "events_published_by_stream": dict(published),
        "events_failed_to_publish": dict(feed_failures),
        "last_seq_observed_by_stream": observed_last,
        "messages_delivered": delivered,
        "messages_delivered_per_second": round(delivered / hold_seconds, 1) if hold_seconds else None,
        "drain_seconds": drain_seconds,
        **loss,
        "pings_sent": sum(c.pings for c in held),
        "pongs_received": sum(c.pongs for c in held),
        "burst": {**burst_result, "held_to_the_end": open_burst},
        "errors": {"held": held_tally.as_dict(), "burst": burst_tally.as_dict()},
        "abuse": abuse,
        "abuse_rounds": len(rounds),
        "memory": memory,
        "gateway_process_cpu_seconds_during_hold": round(stack_cpu, 1),
        "moto_process_cpu_seconds_during_hold": round(moto_cpu, 1),
        **latencies(held, published_at),
        "background_task_failures": task_failures,
        "fanout_queue_lag_ms_p50": (stats.get("pumps") or {}).get("quanttrade-fanout", {}).get("queue_lag_ms_p50"),
        "stack_stats": stats,
        "seconds": round(time.monotonic() - began, 1),
    }


def report(figures: dict[str, Any]) -> None:
    memory = figures["memory"]
    burst = figures["burst"]
    lines = [
        "",
        f"connections held      {figures['connections_held_to_the_end']} of {figures['connections_requested']} "
        f"subscribed clients for {figures['hold_seconds']}s (+{burst['held_to_the_end']} of the burst)",
        f"setup                 {figures['connections_subscribed']} subscribed in {figures['setup_seconds']}s "
        f"({figures['setup_connects_per_second']}/s), failures {figures['setup_failures'] or 'none'}",
        f"burst                 {burst['admitted']} of {burst['launched']} admitted "
        f"(launched in {burst['launch_seconds']}s, all answered within {burst['all_admitted_after_seconds']}s)",
        f"feed                  {figures['events_published']} events, {figures['messages_delivered']} messages "
        f"delivered ({figures['messages_delivered_per_second']}/s), drained in {figures['drain_seconds']}s",
        f"messages lost         {figures['messages_lost']} (clients checked {figures['clients_checked']}, "
        f"with gaps {figures['clients_with_gaps']}, duplicates {figures['duplicates_received']}); "
        f"late at the drain deadline {figures['messages_late_at_deadline']}",
        f"publish to receive    p50 {figures['latency_p50_ms']} ms, p99 {figures['latency_p99_ms']} ms, "
        f"max {figures['latency_max_ms']} ms; fan-out queue lag p50 {figures['fanout_queue_lag_ms_p50']} ms",
        f"p50 by 10 s           {figures['latency_p50_ms_by_10s_of_publishing']}",
        f"CPU during the hold   gateway process {figures['gateway_process_cpu_seconds_during_hold']}s, "
        f"moto {figures['moto_process_cpu_seconds_during_hold']}s (of {figures['hold_seconds']}s)",
        f"pings                 {figures['pings_sent']} sent, {figures['pongs_received']} pongs",
        f"errors, held          {figures['errors']['held']}",
        f"errors, burst         {figures['errors']['burst']}",
        f"gateway RSS           {memory['gateway_rss_mib_start']} MiB at start, "
        f"{memory['gateway_rss_mib_after_setup']} after setup, {memory['gateway_rss_mib_end']} at end "
        f"(moto {memory['moto_rss_mib_start']} -> {memory['moto_rss_mib_end']} MiB)",
        f"abusive clients       {figures['abuse_rounds']} rounds:",
    ]
    for name, outcome in figures["abuse"].items():
        lines.append(f"  {name:20} {outcome['as_expected']}/{outcome['runs']} as expected; seen {outcome['observed']}")
    if figures["background_task_failures"]:
        lines.append(f"background failures   {figures['background_task_failures']}")
    lines.append(f"total                 {figures['seconds']}s")
    print("\n".join(lines))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=2000, help="subscribed clients held (2000)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds they are held (60)")
    parser.add_argument("--rate", type=float, default=1.0, help="MarketData events per second, all streams (1)")
    parser.add_argument("--burst", type=int, default=500, help="connects launched within one second (500)")
    parser.add_argument("--burst-after", type=float, default=15.0, help="seconds into the hold (15)")
    parser.add_argument(
        "--ping-interval", type=float, default=30.0, help="seconds between a client's pings (30; 0: none)"
    )
    parser.add_argument(
        "--abuse-interval", type=float, default=10.0, help="seconds between abusive rounds (10; 0: none)"
    )
    parser.add_argument("--output", default=str(RESULTS), help="JSON results (bench/soak-results.json)")
    args = parser.parse_args(argv)
    command = " ".join(["python -m bench.soak", *(sys.argv[1:] if argv is None else argv)])
    # Described before the run, so the load average is other work's, not ours.
    machine_before = machine.describe()
    figures = asyncio.run(soak(args))
    report(figures)
    machine_before["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results = {"command": command, "machine": machine_before, **figures}
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"written: {os.path.relpath(args.output, Path.cwd())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
