"""End to end on the local stack: one PutEvents of a MarketData event to 1,000 and to 5,000 WebSocket clients.

What is measured, per audience size, over REPEATS publishes spaced so their
deliveries never overlap:

* publish-to-receive latency: `time.time()` in the publisher right before
  `events.put_events`, and in each client when its frame arrives (one machine,
  one clock), pooled over every client of every publish: p50 and p99;
* deliveries per second: audience / (last arrival - publish), the median over
  the publishes;
* the ceiling: a plain `websockets` server broadcasting a frame of the same byte
  size to the same number of clients (`websockets.asyncio.server.broadcast`),
  timed the same way from the moment the bench asks it to broadcast; and the
  ratio service / ceiling.

Process layout, for fairness on a 2-core machine: the local stack (gateway
emulator, handlers, pumps) in one child process, moto in its own grandchild
(the stack's default), the plain server in another child, and every client in
this process. Both servers are measured with the same clients, so whatever
this process costs per received frame is paid on both sides of the ratio; the
bench's own CPU time per phase is reported so a client-bound ceiling shows.

Run: `python -m bench.end_to_end [--audiences 1000 5000] [--repeats 20]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(ROOT, "layers", "shared", "python")

SECRET = "bench-end-to-end-secret-at-least-32-bytes-long"
SYMBOL = "BENCH"
STREAM = f"market_data:{SYMBOL}"
SUBSCRIBE = {"action": "subscribe", "streams": [{"stream_type": "market_data", "symbol": SYMBOL}]}
AUDIENCES = (1000, 5000)
REPEATS = 20
WARMUPS = 2  # publishes per audience size before measuring: handler imports, pools, first Management API sockets
CONNECT_WAVE = 200
DELIVERY_TIMEOUT = 30.0  # one publish must reach every client within this, or the run reports what arrived
# Quiet time after a publish reached everyone. A publish itself takes longer than the fan-out's 0.5 s audience
# cache, so every publish reads its audience afresh: "one PutEvents to N clients", not a hot stream's tick.
GAP_SECONDS = 0.3
STARTUP_TIMEOUT = 90.0


def raise_fd_limit() -> int:
    """Raise this process's open-file limit to the hard limit: 5,000 sockets outgrow the usual 1,024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else 1 << 20
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """Nearest-rank percentile (no interpolation: a p99 is a latency some client really saw)."""
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))
    return ordered[index]


# ------------------------------------------------------------------ child processes


def _announce(payload: dict[str, Any]) -> None:
    """Tell the parent where we listen, then stop writing to the pipe it no longer reads.

    Powertools prints an EMF document to stdout whenever a metric collects 100
    values, even with metrics disabled, and the fan-out adds one DeliveryLag
    value per delivered post: a pipe nobody reads fills after a few events and
    the next print blocks the fan-out for good. /dev/null takes it instead.
    """
    sys.stdout.write(json.dumps(payload) + "\n")
    sys.stdout.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


async def _until_stdin_closes() -> None:
    # The parent holds our stdin: when it closes it (or dies), we stop, so no server outlives a run.
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


async def _serve_stack(options: dict[str, Any]) -> None:
    import logging

    from local.stack.config import StackConfig
    from local.stack.local_stack import LocalStack, configure_logging

    configure_logging(options.pop("component_log_level", "WARNING"))
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    config = StackConfig(host="127.0.0.1", gateway_port=0, moto_port=0, jwt_secret=SECRET, dashboard=False, **options)
    stack = LocalStack(config)
    await stack.start()
    try:
        _announce(
            {
                "websocket_url": stack.websocket_url,
                "http_url": stack.http_url,
                "aws_endpoint_url": stack.aws_endpoint_url,
                "management_endpoint": stack.management_endpoint,
                # The template names its tables: the benchmark asks the stack instead of guessing.
                "subscriptions_table": stack.settings.subscriptions_table if stack.settings else "",
                "connections_table": stack.settings.connections_table if stack.settings else "",
                "event_bus_name": stack.event_bus_name,
                "pid": os.getpid(),
            }
        )
        await _until_stdin_closes()
    finally:
        await stack.stop()


async def _serve_plain() -> None:
    """The ceiling: a bare `websockets` server that broadcasts what the control connection asks for."""
    from websockets.asyncio.server import ServerConnection, broadcast, serve

    clients: set[ServerConnection] = set()

    async def handle(connection: ServerConnection) -> None:
        if connection.request is not None and connection.request.path == "/control":
            async for order in connection:
                request = json.loads(order)
                frame = _plain_frame(request["event_id"], int(request["size"]))
                broadcast(clients, frame)
                await connection.send(json.dumps({"event_id": request["event_id"], "clients": len(clients)}))
            return
        clients.add(connection)
        try:
            await connection.wait_closed()
        finally:
            clients.discard(connection)

    async with serve(handle, "127.0.0.1", 0, compression=None, max_size=None, ping_interval=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        _announce({"websocket_url": f"ws://127.0.0.1:{port}/", "pid": os.getpid()})
        await _until_stdin_closes()


def _plain_frame(event_id: str, size: int) -> str:
    """A market-data-shaped frame of exactly `size` bytes, so clients parse it the way they parse the real one."""
    head = {"message_type": "market_data", "stream": STREAM, "payload": {"event_id": event_id, "pad": ""}}
    bare = json.dumps(head, separators=(",", ":"))
    head["payload"]["pad"] = "x" * max(0, size - len(bare))
    return json.dumps(head, separators=(",", ":"))


# ------------------------------------------------------------------ the AWS samples' pattern (its own process)

_SAMPLES_CLIENTS: dict[str, Any] = {}


def samples_broadcast(aws_endpoint: str, management_endpoint: str, table: str, frame: str) -> tuple[float, int, int]:
    """What the AWS samples' send-message function does with one event: Scan the connections table, then
    `post_to_connection` to each connection, one after another, deleting those that are gone.

    Runs in a worker process, as a Lambda function would, so its CPU is not the clients'. Returns
    (the time it started, posts that succeeded, connections gone).
    """
    import boto3

    started = time.time()
    if not _SAMPLES_CLIENTS:
        credentials = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
        _SAMPLES_CLIENTS["dynamodb"] = boto3.client(
            "dynamodb", region_name="us-east-1", endpoint_url=aws_endpoint, **credentials
        )
        _SAMPLES_CLIENTS["management"] = boto3.client(
            "apigatewaymanagementapi", region_name="us-east-1", endpoint_url=management_endpoint, **credentials
        )
    dynamodb, management = _SAMPLES_CLIENTS["dynamodb"], _SAMPLES_CLIENTS["management"]
    posted = gone = 0
    # The table also holds per-connection counters; the samples' table holds only connection rows.
    kwargs: dict[str, Any] = {
        "TableName": table,
        "ProjectionExpression": "pk",
        "FilterExpression": "kind = :connection",
        "ExpressionAttributeValues": {":connection": {"S": "connection"}},
    }
    while True:
        page = dynamodb.scan(**kwargs)
        for item in page.get("Items", []):
            try:
                management.post_to_connection(ConnectionId=item["pk"]["S"], Data=frame.encode())
                posted += 1
            except management.exceptions.GoneException:
                gone += 1
        if "LastEvaluatedKey" not in page:
            return started, posted, gone
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


class ChildProcess:
    """A server in a child process, announced by one JSON line on its stdout, stopped by closing its stdin."""

    def __init__(
        self, role: str, options: dict[str, Any] | None = None, startup_timeout: float = STARTUP_TIMEOUT
    ) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, SHARED, env.get("PYTHONPATH", "")) if p)
        # A file, not a pipe: nobody reads stderr while the run lasts, and a full pipe would stall the child.
        self.log = tempfile.TemporaryFile(mode="w+", prefix=f"bench-{role}-", suffix=".log")  # noqa: SIM115
        command = [sys.executable, "-m", "bench.end_to_end", "--serve", role, "--options", json.dumps(options or {})]
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, cwd=ROOT, env=env, text=True
        )
        line: list[str] = []
        stdout = self.process.stdout
        assert stdout is not None
        reader = threading.Thread(target=lambda: line.append(stdout.readline()), daemon=True)
        reader.start()
        reader.join(startup_timeout)
        if not line or not line[0].strip():
            tail = self.log_tail()
            self.close()
            raise RuntimeError(f"{role} server did not start within {startup_timeout:g}s: {tail}")
        self.info: dict[str, Any] = json.loads(line[0])
        self.pid: int = int(self.info["pid"])

    def log_tail(self, characters: int = 2000) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-characters:].strip()

    def close(self, timeout: float = 60.0) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(OSError):
                assert self.process.stdin is not None
                self.process.stdin.close()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.terminate()
                try:
                    self.process.wait(10)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(10)
        self.log.close()

    def __enter__(self) -> ChildProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def stack_stats(http_url: str) -> dict[str, Any]:
    """The stack's own counters (function invocations and errors, pump lag): what CloudWatch would show."""
    from local.signed_http import signed_request

    try:
        # Signed as the local administrator: /local/stats is IAM-authorised like the admin API.
        with urllib.request.urlopen(
            signed_request("GET", f"{http_url}/local/stats", region="us-east-1"), timeout=10
        ) as response:
            return dict(json.loads(response.read()))
    except OSError as error:
        return {"error": str(error)}


# ------------------------------------------------------------------ clients (this process)


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

    def __init__(self, url: str, arrivals: Arrivals, *, subscribe: bool, token_secret: str | None = None) -> None:
        self.url = url
        self.arrivals = arrivals
        self.subscribe = subscribe
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
                await connection.send(json.dumps({**SUBSCRIBE, "request_id": request_id}))
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


# ------------------------------------------------------------------ measurements


@dataclass
class Round:
    """One audience size on one server: latencies pooled over the publishes, one rate per publish."""

    audience: int
    latencies_ms: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)
    delivered: int = 0
    expected: int = 0
    incomplete: int = 0
    frame_bytes: int | None = None
    bench_cpu_seconds: float = 0.0
    wall_seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "deliveries_per_second": round(statistics.median(self.rates), 1) if self.rates else None,
            "latency_p50_ms": _round(percentile(self.latencies_ms, 0.50)),
            "latency_p99_ms": _round(percentile(self.latencies_ms, 0.99)),
            "latency_max_ms": _round(max(self.latencies_ms) if self.latencies_ms else None),
            "delivered": self.delivered,
            "expected": self.expected,
            "incomplete_publishes": self.incomplete,
            "frame_bytes": self.frame_bytes,
            # Close to 1 means the clients (this process) were a full core busy: the rate is client-bound.
            "bench_process_cpu_share": round(self.bench_cpu_seconds / self.wall_seconds, 2)
            if self.wall_seconds
            else None,
        }


def _ratio(numerator: dict[str, Any], denominator: dict[str, Any], digits: int = 2) -> float | None:
    """The ratio of two rounds' deliveries per second, when both have one."""
    top, bottom = numerator["deliveries_per_second"], denominator["deliveries_per_second"]
    return round(top / bottom, digits) if top and bottom else None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


async def _measure(arrivals: Arrivals, audience: int, repeats: int, publish: Any, name: str, warmups: int = 0) -> Round:
    """Publish `warmups + repeats` times, each after the previous reached everyone (or timed out)."""
    measured = Round(audience)
    arrivals.expected = audience
    for attempt in range(warmups + repeats):
        event_id, published_at, cpu_at = await publish(attempt)
        done = arrivals.expect(event_id)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), DELIVERY_TIMEOUT)
        times = arrivals.times.get(event_id, [])
        if attempt < warmups:
            await asyncio.sleep(GAP_SECONDS)
            continue
        finished = max(times) if times else published_at
        measured.wall_seconds += finished - published_at
        measured.bench_cpu_seconds += time.process_time() - cpu_at
        measured.expected += audience
        measured.delivered += len(times)
        measured.latencies_ms.extend((t - published_at) * 1000 for t in times)
        if len(times) < audience:
            measured.incomplete += 1
            print(f"  {name}: publish {attempt} reached {len(times)} of {audience} clients", flush=True)
        elif finished > published_at:
            measured.rates.append(audience / (finished - published_at))
        measured.frame_bytes = measured.frame_bytes or arrivals.frame_bytes.get(event_id)
        await asyncio.sleep(GAP_SECONDS)
    return measured


def _market_data_entry(attempt: int, bus: str) -> dict[str, Any]:
    from datetime import UTC, datetime

    from quanttrade_ws import topology

    source = next(s.source for s in topology.SOURCES if s.detail_type == "MarketData")
    detail = {
        "symbol": SYMBOL,
        "price": round(100 + attempt * 0.01, 2),
        "bid": round(99.99 + attempt * 0.01, 2),
        "ask": round(100.01 + attempt * 0.01, 2),
        "volume": 1200.0,
        "change": 0.42,
        "change_percent": 0.42,
        "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }
    return {
        "Source": source,
        "DetailType": "MarketData",
        "Detail": json.dumps(detail),
        "EventBusName": bus,
    }


def subscriber_query_ms(endpoint: str, table: str, stream_key: str, runs: int = 5) -> dict[str, Any]:
    """How long moto takes to answer the fan-out's audience Query (the same request, from this process).

    On AWS a Query of a few thousand small items is tens of milliseconds; here it
    is moto's Python serialisation, and this figure shows how much of the
    publish-to-receive latency is the emulator rather than the service.
    """
    import boto3

    client = boto3.client(
        "dynamodb",
        region_name="us-east-1",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    samples, items = [], 0
    for _ in range(runs):
        kwargs: dict[str, Any] = {
            "TableName": table,
            "KeyConditionExpression": "stream_key = :k",
            "ExpressionAttributeValues": {":k": {"S": stream_key}},
            "ProjectionExpression": "connection_id, user_id, #i, filters",
            "ExpressionAttributeNames": {"#i": "interval"},
            "ConsistentRead": True,
        }
        started, items = time.perf_counter(), 0
        while True:
            page = client.query(**kwargs)
            items += len(page.get("Items", []))
            if not page.get("LastEvaluatedKey"):
                break
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        samples.append((time.perf_counter() - started) * 1000)
    return {"median_ms": round(statistics.median(samples), 1), "items": items}


def _events_client(endpoint: str) -> Any:
    import boto3

    return boto3.client(
        "events",
        region_name="us-east-1",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


async def run_async(audiences: Sequence[int] = AUDIENCES, repeats: int = REPEATS) -> dict[str, Any]:
    from bench.machine import child_pids, cpu_seconds

    audiences = sorted(audiences)
    limit = raise_fd_limit()
    if limit < 2 * max(audiences) + 500:
        raise RuntimeError(f"open-file limit {limit} is too low for {max(audiences)} clients of each server")
    loop = asyncio.get_running_loop()
    figures: dict[str, Any] = {}
    started = time.perf_counter()
    stack_options = {
        "connect_rate_per_second": None,  # the account quota would make connecting 5,000 take 10 s by itself
        "management_rate_per_second": 1e9,  # measure the service, not the emulated account quota
        "simulator": False,
        "sweep_interval": None,
        "idle_timeout": 3600.0,
    }
    with ChildProcess("stack", stack_options) as stack, ChildProcess("plain") as plain:
        print(
            f"stack up (pid {stack.pid}) and plain server up (pid {plain.pid}) in {time.perf_counter() - started:.1f}s"
        )
        events = await loop.run_in_executor(None, _events_client, stack.info["aws_endpoint_url"])
        service_arrivals, plain_arrivals = Arrivals(), Arrivals()
        service = ClientPool(stack.info["websocket_url"], service_arrivals, subscribe=True, token_secret=SECRET)
        ceiling = ClientPool(plain.info["websocket_url"] + "clients", plain_arrivals, subscribe=False)
        from websockets.asyncio.client import connect

        control = await connect(plain.info["websocket_url"] + "control", max_size=None, ping_interval=None)

        async def publish_service(attempt: int) -> tuple[str, float, float]:
            entry = _market_data_entry(attempt, stack.info["event_bus_name"])

            def put() -> tuple[str, float]:
                published_at = time.time()
                response = events.put_events(Entries=[entry])
                if response.get("FailedEntryCount"):
                    raise RuntimeError(f"PutEvents refused the event: {response['Entries'][0]}")
                return str(response["Entries"][0]["EventId"]), published_at

            cpu_at = time.process_time()
            event_id, published_at = await loop.run_in_executor(None, put)
            return event_id, published_at, cpu_at

        frame_size = 0

        async def publish_plain(attempt: int) -> tuple[str, float, float]:
            event_id = f"plain-{len(ceiling.connections)}-{attempt}"
            cpu_at = time.process_time()
            published_at = time.time()
            await control.send(json.dumps({"event_id": event_id, "size": frame_size}))
            return event_id, published_at, cpu_at

        samples_worker = ProcessPoolExecutor(max_workers=1)

        async def publish_samples(attempt: int) -> tuple[str, float, float]:
            event_id = f"samples-{attempt}-{time.monotonic_ns()}"
            frame = _plain_frame(event_id, frame_size)
            cpu_at = time.process_time()
            started, _, _ = await loop.run_in_executor(
                samples_worker,
                samples_broadcast,
                stack.info["aws_endpoint_url"],
                stack.info["management_endpoint"],
                stack.info["connections_table"],
                frame,
            )
            return event_id, started, cpu_at

        try:
            for audience in audiences:
                stack_cpu_before = cpu_seconds(stack.pid) or 0.0
                already = len(service.connections)
                setup = await service.grow(audience)
                stack_cpu_setup = (cpu_seconds(stack.pid) or 0.0) - stack_cpu_before
                added = setup["clients"] - already
                print(
                    f"{added} more service clients ({setup['clients']} in all) connected and subscribed in "
                    f"{setup['seconds']}s ({added / max(setup['seconds'], 1e-9):.0f}/s; "
                    f"stack process CPU {stack_cpu_setup:.1f}s; "
                    f"refusals {setup['refusals']})",
                    flush=True,
                )
                if len(service.connections) < audience:
                    raise RuntimeError(f"only {len(service.connections)} of {audience} clients could subscribe")
                # Thousands of long-lived client objects: keep the collector from walking them mid-measurement.
                gc.collect()
                gc.freeze()
                stack_cpu_before = cpu_seconds(stack.pid) or 0.0
                moto_cpu_before = sum(cpu_seconds(pid) or 0.0 for pid in child_pids(stack.pid))
                measured = await _measure(
                    service_arrivals, audience, repeats, publish_service, f"service {audience}", warmups=WARMUPS
                )
                stack_cpu = (cpu_seconds(stack.pid) or 0.0) - stack_cpu_before
                moto_cpu = sum(cpu_seconds(pid) or 0.0 for pid in child_pids(stack.pid)) - moto_cpu_before
                frame_size = measured.frame_bytes or 0
                service_figures = measured.summary()
                print(f"service  {audience}: {service_figures}", flush=True)

                await ceiling.grow(audience)
                plain_cpu_before = cpu_seconds(plain.pid) or 0.0
                plain_measured = await _measure(
                    plain_arrivals, audience, repeats, publish_plain, f"plain {audience}", warmups=WARMUPS
                )
                plain_cpu = (cpu_seconds(plain.pid) or 0.0) - plain_cpu_before
                plain_figures = plain_measured.summary()
                print(f"ceiling  {audience}: {plain_figures}", flush=True)

                samples_measured = await _measure(
                    service_arrivals,
                    audience,
                    max(2, repeats // 4),
                    publish_samples,
                    f"samples {audience}",
                    warmups=1,
                )
                samples_figures = samples_measured.summary()
                print(f"samples  {audience}: {samples_figures}", flush=True)

                query = await loop.run_in_executor(
                    None, subscriber_query_ms, stack.info["aws_endpoint_url"], stack.info["subscriptions_table"], STREAM
                )
                print(f"moto answers the {query['items']}-subscriber Query in {query['median_ms']} ms", flush=True)
                prefix = f"end_to_end_{audience}"
                ratio = _ratio(service_figures, plain_figures, digits=3)
                figures.update(
                    {
                        f"{prefix}_deliveries_per_second": service_figures["deliveries_per_second"],
                        f"{prefix}_latency_p50_ms": service_figures["latency_p50_ms"],
                        f"{prefix}_latency_p99_ms": service_figures["latency_p99_ms"],
                        f"{prefix}_latency_max_ms": service_figures["latency_max_ms"],
                        f"{prefix}_ceiling_deliveries_per_second": plain_figures["deliveries_per_second"],
                        f"{prefix}_ceiling_latency_p50_ms": plain_figures["latency_p50_ms"],
                        f"{prefix}_ceiling_latency_p99_ms": plain_figures["latency_p99_ms"],
                        f"{prefix}_ratio_to_ceiling": ratio,
                        f"{prefix}_samples_pattern_deliveries_per_second": samples_figures["deliveries_per_second"],
                        f"{prefix}_samples_pattern_latency_p50_ms": samples_figures["latency_p50_ms"],
                        f"{prefix}_samples_pattern_latency_p99_ms": samples_figures["latency_p99_ms"],
                        f"{prefix}_ratio_to_samples_pattern": _ratio(service_figures, samples_figures),
                        f"{prefix}_delivered": service_figures["delivered"],
                        f"{prefix}_expected": service_figures["expected"],
                        f"{prefix}_setup_seconds": setup["seconds"],
                        f"{prefix}_setup_new_clients": added,
                        f"{prefix}_frame_bytes": service_figures["frame_bytes"],
                        f"{prefix}_ceiling_frame_bytes": plain_figures["frame_bytes"],
                        f"{prefix}_stack_cpu_seconds_per_1000_deliveries": round(
                            1000 * stack_cpu / max(service_figures["delivered"], 1), 3
                        ),
                        f"{prefix}_moto_cpu_seconds_per_1000_deliveries": round(
                            1000 * moto_cpu / max(service_figures["delivered"], 1), 3
                        ),
                        f"{prefix}_ceiling_server_cpu_seconds_per_1000_deliveries": round(
                            1000 * plain_cpu / max(plain_figures["delivered"], 1), 3
                        ),
                        f"{prefix}_moto_subscriber_query_ms": query["median_ms"],
                        f"{prefix}_bench_cpu_share_service": service_figures["bench_process_cpu_share"],
                        f"{prefix}_bench_cpu_share_ceiling": plain_figures["bench_process_cpu_share"],
                    }
                )
            figures["end_to_end_service_clients_closed_early"] = service.closed_early
            figures["end_to_end_stack_stats"] = await loop.run_in_executor(None, stack_stats, stack.info["http_url"])
        finally:
            samples_worker.shutdown(cancel_futures=True)
            await control.close()
            await ceiling.close()
            await service.close()
    figures["end_to_end_repeats"] = repeats
    figures["end_to_end_seconds"] = round(time.perf_counter() - started, 1)
    return figures


def run(audiences: Sequence[int] = AUDIENCES, repeats: int = REPEATS) -> dict[str, Any]:
    return asyncio.run(run_async(audiences, repeats))


def _serve(role: str, options: dict[str, Any]) -> None:
    raise_fd_limit()
    asyncio.run(_serve_stack(options) if role == "stack" else _serve_plain())


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    parser = argparse.ArgumentParser(prog="python -m bench.end_to_end", description=__doc__.split("\n")[0])
    parser.add_argument("--audiences", type=int, nargs="+", default=list(AUDIENCES))
    parser.add_argument("--repeats", type=int, default=REPEATS)
    parser.add_argument("--serve", choices=["stack", "plain"], help=argparse.SUPPRESS)
    parser.add_argument("--options", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        _serve(args.serve, json.loads(args.options))
        return None
    figures = run(args.audiences, args.repeats)
    print(json.dumps(figures, indent=2))
    return figures


if __name__ == "__main__":
    main()
