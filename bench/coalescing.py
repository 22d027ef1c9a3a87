"""Coalescing window and latest-only conflation on the local stack: messages per post, cost per update, latency.

For each number of symbols a client follows (`--symbols`) and each coalescing
window (`Settings.coalesce_window_ms`, 0 = off) the local stack is started with
that setting (the synthesized template, as `make dev` runs it), and `--clients`
WebSocket clients connect and subscribe to the same market_data symbols: half
of them for every tick, half with `latest_only`. Then `--seconds` of ticks are published through EventBridge at
`--rate` ticks per second per symbol (one PutEvents per round, one entry per
symbol), and every frame each client receives is recorded.

Per window and kind of client:

* **messages per post**: data messages received / frames received (each frame
  is one Management API post);
* **updates per post**: ticks the client was owed (published x subscribed) /
  frames: the same for every-tick clients, more for latest-only ones;
* **cost per million updates**: API Gateway messages as billed (one per 32 KB
  of each frame) per update, plus the per-event lines of bench.cost (EventBridge,
  SQS, DynamoDB) shared by the audience, the fan-out's posting time scaled by
  posts per update, and what the coalescing window adds (the fan-out's
  invocations that waited, one window each at the function's memory); given at
  this run's audience and at an audience of 1,000;
* **latency**: publish (before PutEvents) to receipt, p50/p99 over every
  (client, tick) delivered; **added p99** = this window's p99 minus the p99
  with the window off, for every-tick clients.

Run: `python -m bench.coalescing [--symbols 1 3] [--windows 0 100 200] [--seconds 15] [--no-write]`
(under a minute per symbol count and window on the 2-core development machine).
Figures are merged into bench/results.json under `coalescing_*`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import cost, machine
from bench.child_process import ChildProcess
from bench.measurement import percentile, raise_fd_limit
from bench.stack_server import SECRET, events_client, stack_stats

RESULTS = Path(__file__).resolve().parent / "results.json"
PREFIX = "coalescing_"
WINDOWS = (0, 100, 200)
SYMBOL_COUNTS = (1, 3)  # symbols each client follows; the free level's budget is five symbol streams
RATE = 10.0  # ticks per second per symbol (issue 14's figure)
SECONDS = 15.0
CLIENTS = 20
WARMUP_SECONDS = 2.0
DRAIN_TIMEOUT = 30.0
STARTUP_TIMEOUT = 300.0
BILLING_UNIT_BYTES = 32 * 1024  # API Gateway bills a WebSocket message per 32 KB
AT_SCALE_AUDIENCE = 1000
# Fallback when bench/results.json holds no cost inputs yet (figures of bench.dynamodb_work / delivery_worker).
DEFAULT_COST_INPUTS = {
    "dynamodb_calls_per_event": {"GetItem": 2.0, "TransactWriteItems": 1.0, "Query": 3.0},
    "cpu_seconds_per_message": 3.7e-5,
}


@dataclass
class Client:
    latest_only: bool
    frames: int = 0
    billed_units: int = 0
    messages: int = 0
    latencies: list[float] = field(default_factory=list)


@dataclass
class Recorder:
    """What each client received, against when each event was published."""

    symbols: set[str]
    published: dict[str, float] = field(default_factory=dict)
    clients: list[Client] = field(default_factory=list)
    counting: bool = False

    def record(self, client: Client, frame: str | bytes, now: float) -> None:
        if not self.counting:
            return
        try:
            message = json.loads(frame)
        except ValueError:
            return
        inner = message["payload"]["messages"] if message.get("message_type") == "batch" else [message]
        data = [m for m in inner if m.get("stream", "").partition(":")[2] in self.symbols]
        if not data:
            return  # replies and the like: not a delivery of ticks
        client.frames += 1
        client.billed_units += math.ceil(len(frame) / BILLING_UNIT_BYTES)
        for item in data:
            published = self.published.get(item["payload"].get("event_id", ""))
            if published is not None:
                client.messages += 1
                client.latencies.append(now - published)

    def reset(self) -> None:
        self.published.clear()
        for client in self.clients:
            client.frames = client.billed_units = client.messages = 0
            client.latencies.clear()


def _tick(symbol: str, round_number: int, bus: str) -> dict[str, Any]:
    from datetime import UTC, datetime

    from quanttrade_ws import topology

    source = next(s.source for s in topology.SOURCES if s.detail_type == "MarketData")
    price = round(100 + (round_number % 1000) * 0.01, 2)
    detail = {
        "symbol": symbol,
        "price": price,
        "bid": round(price - 0.01, 2),
        "ask": round(price + 0.01, 2),
        "volume": 1200.0,
        "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }
    return {"Source": source, "DetailType": "MarketData", "Detail": json.dumps(detail), "EventBusName": bus}


async def _connect(url: str, index: int, symbols: list[str], latest_only: bool) -> Any:
    from websockets.asyncio.client import connect

    from quanttrade_ws.auth import mint_token

    token = mint_token(SECRET, f"coalescing-{index:04d}-{os.urandom(3).hex()}")
    connection = await connect(f"{url}?token={token}", open_timeout=60, max_size=None, ping_interval=None)
    streams = [{"stream_type": "market_data", "symbol": s, "latest_only": latest_only} for s in symbols]
    await connection.send(json.dumps({"action": "subscribe", "streams": streams, "request_id": "sub"}))
    while True:
        reply = json.loads(await asyncio.wait_for(connection.recv(), 60))
        if reply.get("request_id") == "sub":
            if reply.get("message_type") != "subscribe":
                raise RuntimeError(f"subscribe refused: {reply.get('payload')}")
            return connection


async def _publish(events: Any, recorder: Recorder, symbols: list[str], bus: str, seconds: float, rate: float) -> int:
    loop = asyncio.get_running_loop()
    rounds = int(seconds * rate)
    started = time.perf_counter()
    sent = 0
    for round_number in range(rounds):
        # Paced from the start, not from the last send, so a slow PutEvents does not lower the rate.
        await asyncio.sleep(max(0.0, started + round_number / rate - time.perf_counter()))
        entries = [_tick(symbol, round_number, bus) for symbol in symbols]

        def put(entries: list[dict[str, Any]] = entries) -> tuple[list[dict[str, Any]], float]:
            at = time.time()
            return events.put_events(Entries=entries)["Entries"], at

        answered, published_at = await loop.run_in_executor(None, put)
        for entry in answered:
            if "EventId" in entry:
                recorder.published[entry["EventId"]] = published_at
                sent += 1
    return sent


async def _measure(window: int, clients: int, seconds: float, rate: float, symbols: list[str]) -> dict[str, Any]:
    options: dict[str, Any] = {
        "connect_rate_per_second": None,
        "management_rate_per_second": 1e9,
        "simulator": False,
        "sweep_interval": None,
        "idle_timeout": 3600.0,
        "settings_overrides": {"coalesce_window_ms": window},
    }
    loop = asyncio.get_running_loop()
    # A stack per window: the setting is part of the synthesized template. Starting it takes most of a run,
    # and longer on a busy machine than bench.child_process's default patience.
    with ChildProcess("stack", options, startup_timeout=STARTUP_TIMEOUT) as stack:
        events = await loop.run_in_executor(None, events_client, stack.info["aws_endpoint_url"])
        bus = stack.info["event_bus_name"]
        recorder = Recorder(set(symbols))
        connections = []
        readers = []
        for index in range(clients):
            client = Client(latest_only=index % 2 == 1)
            recorder.clients.append(client)
            connection = await _connect(stack.info["websocket_url"], index, symbols, client.latest_only)
            connections.append(connection)

            async def read(connection: Any = connection, client: Client = client) -> None:
                try:
                    async for frame in connection:
                        recorder.record(client, frame, time.time())
                except Exception:  # a dropped client shows as missing deliveries in the figures
                    return

            readers.append(asyncio.create_task(read()))
        recorder.counting = True
        # Warm the functions (imports, pools, the fan-out's audience cache) before measuring.
        await _publish(events, recorder, symbols, bus, WARMUP_SECONDS, rate)
        await asyncio.sleep(1.0)
        recorder.reset()
        before = await loop.run_in_executor(None, stack_stats, stack.info["http_url"])
        published = await _publish(events, recorder, symbols, bus, seconds, rate)
        every_tick = [c for c in recorder.clients if not c.latest_only]
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while time.monotonic() < deadline and sum(c.messages for c in every_tick) < published * len(every_tick):
            await asyncio.sleep(0.1)
        await asyncio.sleep(max(0.5, 2 * window / 1000))  # the last latest-only frames
        after = await loop.run_in_executor(None, stack_stats, stack.info["http_url"])
        recorder.counting = False
        for connection in connections:
            await connection.close()
        for reader in readers:
            reader.cancel()
    return {"published": published, "clients": recorder.clients, "stats": (before, after)}


def _pump(stats: dict[str, Any], name: str) -> dict[str, float]:
    """A queue pump's counters, found by the function it feeds (the template decides the full name)."""
    return next((dict(v) for k, v in stats.get("pumps", {}).items() if name in k.lower()), {})


def _figures(window: int, measured: dict[str, Any], cost_inputs: dict[str, Any], rate: float) -> dict[str, Any]:
    published: int = measured["published"]
    before, after = measured["stats"]
    fanout_batches = _pump(after, "fanout").get("batches", 0) - _pump(before, "fanout").get("batches", 0)
    fanout_records = _pump(after, "fanout").get("records", 0) - _pump(before, "fanout").get("records", 0)
    figures: dict[str, Any] = {
        "events_published": published,
        "fanout_batches": fanout_batches,
        "records_per_fanout_batch": round(fanout_records / fanout_batches, 2) if fanout_batches else None,
    }
    for kind, latest_only in (("every_tick", False), ("latest_only", True)):
        group = [c for c in measured["clients"] if c.latest_only == latest_only]
        frames = sum(c.frames for c in group)
        units = sum(c.billed_units for c in group)
        messages = sum(c.messages for c in group)
        owed = published * len(group)
        latencies = sorted(x for c in group for x in c.latencies)
        p50, p99 = percentile(latencies, 0.50), percentile(latencies, 0.99)
        figures.update(
            {
                f"{kind}_clients": len(group),
                f"{kind}_updates_owed": owed,
                f"{kind}_messages_received": messages,
                f"{kind}_posts": frames,
                f"{kind}_messages_per_post": round(messages / frames, 2) if frames else None,
                f"{kind}_updates_per_post": round(owed / frames, 2) if frames else None,
                f"{kind}_latency_p50_ms": round(1000 * p50, 1) if p50 is not None else None,
                f"{kind}_latency_p99_ms": round(1000 * p99, 1) if p99 is not None else None,
            }
        )
        for audience, label in ((len(measured["clients"]), "this_audience"), (AT_SCALE_AUDIENCE, "audience_1000")):
            lines = _cost_per_million_updates(
                units / owed if owed else 0.0,
                frames / owed if owed else 0.0,
                audience,
                window,
                fanout_batches / published if published else 0.0,
                cost_inputs,
            )
            figures[f"{kind}_cost_per_million_updates_{label}"] = lines
    return figures


def _cost_per_million_updates(
    billed_per_update: float,
    posts_per_update: float,
    audience: int,
    window_ms: int,
    batches_per_event: float,
    cost_inputs: dict[str, Any],
) -> dict[str, float]:
    """bench.cost's lines per million updates, with API Gateway messages and posting time as measured."""
    per_message = cost.cost_per_million(
        audience, cost_inputs["dynamodb_calls_per_event"], cost_inputs["cpu_seconds_per_message"]
    )
    events = 1e6 / audience  # per million updates, every subscriber owed every tick
    lines = {
        "api_gateway_messages": 1e6 * billed_per_update * cost.PRICES["apigw_message"],
        "eventbridge": per_message["eventbridge"],
        "sqs": per_message["sqs"],
        "dynamodb": per_message["dynamodb"],
        # bench.cost's Lambda line is one post per message; a coalesced post carries several.
        "lambda_posting": per_message["lambda"] * posts_per_update,
        # Each fan-out batch that was not full waits out the rest of the window (at most the window).
        "lambda_window_wait": events
        * batches_per_event
        * (window_ms / 1000)
        * cost.FANOUT_MEMORY_GB
        * cost.PRICES["lambda_gb_second_arm64"],
    }
    lines["total"] = sum(lines.values())
    return {name: round(value, 4) for name, value in lines.items()}


def _cost_inputs() -> dict[str, Any]:
    try:
        inputs = json.loads(RESULTS.read_text(encoding="utf-8")).get("cost_inputs")
    except (OSError, ValueError):
        inputs = None
    return inputs if isinstance(inputs, dict) and "dynamodb_calls_per_event" in inputs else DEFAULT_COST_INPUTS


def run(
    windows: Sequence[int] = WINDOWS,
    clients: int = CLIENTS,
    seconds: float = SECONDS,
    rate: float = RATE,
    symbol_counts: Sequence[int] = SYMBOL_COUNTS,
) -> dict[str, Any]:
    raise_fd_limit()
    inputs = _cost_inputs()
    figures: dict[str, Any] = {}
    for symbols in symbol_counts:
        names = [f"CO{i:02d}" for i in range(symbols)]
        baseline_p99: float | None = None
        for window in windows:
            started = time.perf_counter()
            load = round(os.getloadavg()[0], 2)
            measured = asyncio.run(_measure(window, clients, seconds, rate, names))
            result = _figures(window, measured, inputs, rate)
            result["seconds"] = round(time.perf_counter() - started, 1)
            result["load_average_1min_at_start"] = load
            if window == 0:
                baseline_p99 = result["every_tick_latency_p99_ms"]
            elif baseline_p99 is not None and result["every_tick_latency_p99_ms"] is not None:
                result["every_tick_added_p99_ms"] = round(result["every_tick_latency_p99_ms"] - baseline_p99, 1)
            figures[f"{PREFIX}symbols_{symbols}_window_{window}ms"] = result
            print(f"{symbols} symbol(s), window {window} ms: {json.dumps(result)}", flush=True)
    figures[f"{PREFIX}workload"] = {
        "ticks_per_second_per_symbol": rate,
        "seconds": seconds,
        "clients": clients,
        "every_tick_clients": clients - clients // 2,
        "latest_only_clients": clients // 2,
        "cost_inputs": inputs,
    }
    return figures


def merge_into_results(figures: dict[str, Any], command: str, described: dict[str, Any], path: Path = RESULTS) -> None:
    """Add this run's keys to the results file, replacing only those it measured again.

    Each (symbols, window) entry carries the command and date that produced it, so runs of other symbol
    counts or windows stay beside it with their own provenance; `coalescing_machine` is the latest run's.
    """
    for value in figures.values():
        if isinstance(value, dict) and "events_published" in value:
            value.update({"command": command, "date": described["date"]})
    machine.merge_results(path, {f"{PREFIX}machine": machine.at_end(described), **figures})


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.coalescing", description=__doc__.split("\n")[0])
    parser.add_argument("--windows", type=int, nargs="+", default=list(WINDOWS), help="ms; 0 = off (0 100 200)")
    parser.add_argument("--clients", type=int, default=CLIENTS, help=f"half every tick, half latest-only ({CLIENTS})")
    parser.add_argument("--seconds", type=float, default=SECONDS, help=f"publishing time per window ({SECONDS:g})")
    parser.add_argument("--rate", type=float, default=RATE, help=f"ticks per second per symbol ({RATE:g})")
    parser.add_argument(
        "--symbols", type=int, nargs="+", default=list(SYMBOL_COUNTS), help="symbols each client follows (1 3)"
    )
    parser.add_argument("--no-write", action="store_true", help="print only; leave bench/results.json alone")
    args = parser.parse_args(argv)
    if args.clients < 2 or args.seconds <= 0 or args.rate <= 0 or not all(1 <= s <= 5 for s in args.symbols):
        parser.error("--clients >= 2, --seconds and --rate > 0, --symbols 1-5 (the free level's budget)")
    if 0 not in args.windows:
        parser.error("--windows must include 0: the added latency is measured against the window off")
    described = machine.describe()
    figures = run(sorted(args.windows), args.clients, args.seconds, args.rate, args.symbols)
    if not args.no_write:
        command = " ".join(["python -m bench.coalescing", *(sys.argv[1:] if argv is None else argv)])
        merge_into_results(figures, command, described)
        print(f"merged into {RESULTS}")
    return figures


if __name__ == "__main__":
    main()
