"""Endurance and capacity of the stack exactly as `make dev` runs it.

    python -m bench.endurance [--minutes 60] [--clients 1000 5000] [--events 20] [--dev-args "..."]

What runs: `python -m local dev` itself, in its own process group, with the
simulator at its default rate (add `--dev-args "--rate 60"` for 10x). This
process is only a client of it, as a user's dashboard would be:

1. Endurance, for `--minutes`:
   * the resident memory of every process of the stack (the dev process, moto,
     the Lambda workers), summed, every `--sample-interval` seconds;
   * a subscriber to every symbol (`market_data` with no symbol) counts the
     ticks it receives, per minute;
   * `/ready` is asked every `--ready-interval` seconds (2 s timeout);
   * every `--probe-interval` seconds a MarketData event for a symbol of its
     own is put on the bus, and the time until a subscriber of that symbol
     receives it is recorded (publish-to-receive; one machine, one clock).
2. Capacity, for each of `--clients`: that many clients connect and subscribe
   to one symbol (time to all subscribed), then `--events` events for that
   symbol are published one after another, each measured to its last receipt.
3. Stop: SIGINT with every client still connected, as Ctrl-C would; the time
   until the dev process has exited, and how many clients saw their socket
   closed by the server.

Figures are printed and merged into bench/results.json under "endurance"
(or `--output`), with the machine section and the command.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import machine
from bench.measurement import percentile, raise_fd_limit

ROOT = Path(__file__).resolve().parent.parent


RESULTS = ROOT / "bench" / "results.json"
OUTPUTS_FILE = ROOT / ".build" / "local" / "outputs.json"
HTTP = "http://127.0.0.1:8081"
WS = "ws://127.0.0.1:8081"
PROBE_SYMBOL = "PROBE"
CAPACITY_SYMBOL = "CAPA"
CONNECT_WAVE = 250  # under the gateway's 500 new connections per second
START_DEADLINE = 300.0
STOP_DEADLINE = 60.0
KEEP_ALIVE_SECONDS = 240.0


# ------------------------------------------------------------------ the stack's processes


def process_tree(root: int) -> list[int]:
    """The root and every descendant."""
    found, pending = [], [root]
    while pending:
        pid = pending.pop()
        found.append(pid)
        pending.extend(machine.child_pids(pid))
    return found


def _command(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            parts = cmdline.read().split(b"\0")
    except OSError:
        return "?"
    text = " ".join(part.decode(errors="replace") for part in parts if part)
    if "local.moto_server" in text:
        return "moto"
    if "lambda_worker" in text:
        return "lambda workers"
    return "dev process" if "local dev" in text or "-m local" in text else text[:40]


def tree_usage(root: int) -> dict[str, Any]:
    """Resident memory (MiB) and CPU seconds of the stack's processes, by kind and in total."""
    by_kind: dict[str, dict[str, float]] = {}
    for pid in process_tree(root):
        rss, cpu = machine.rss_bytes(pid), machine.cpu_seconds(pid)
        if rss is None or cpu is None:
            continue
        kind = by_kind.setdefault(_command(pid), {"rss_mib": 0.0, "cpu_seconds": 0.0, "processes": 0})
        kind["rss_mib"] += rss / 2**20
        kind["cpu_seconds"] += cpu
        kind["processes"] += 1
    return {
        "rss_mib": round(sum(kind["rss_mib"] for kind in by_kind.values()), 1),
        "cpu_seconds": round(sum(kind["cpu_seconds"] for kind in by_kind.values()), 1),
        "by_kind": {name: {k: round(v, 1) for k, v in kind.items()} for name, kind in by_kind.items()},
    }


class DevStack:
    """`python -m local dev` as a user starts it, in its own process group."""

    def __init__(self, dev_args: Sequence[str], log_path: Path) -> None:
        self.log_path = log_path
        self.log = open(log_path, "w")  # noqa: SIM115 - lives as long as the process
        self.process = subprocess.Popen(
            [sys.executable, "-m", "local", "dev", *dev_args],
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, deadline: float = START_DEADLINE) -> float:
        began = time.monotonic()
        while time.monotonic() - began < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"make dev exited with {self.process.returncode}:\n{self.log_tail()}")
            if ready_status()[0] == 200:
                return time.monotonic() - began
            time.sleep(0.5)
        raise RuntimeError(f"not ready within {deadline:.0f} s:\n{self.log_tail()}")

    def interrupt(self) -> float | None:
        """Ctrl-C: SIGINT to the dev process; seconds until the whole process group is gone."""
        began = time.monotonic()
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(STOP_DEADLINE)
        except subprocess.TimeoutExpired:
            return None
        while time.monotonic() - began < STOP_DEADLINE:
            try:
                os.killpg(self.process.pid, 0)
            except ProcessLookupError:
                return time.monotonic() - began
            time.sleep(0.05)
        return None

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.log.close()

    def log_tail(self, characters: int = 3000) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-characters:]


def ready_status(timeout: float = 2.0) -> tuple[int, float]:
    """(HTTP status or 0 for no answer, seconds taken)."""
    began = time.monotonic()
    try:
        with urllib.request.urlopen(f"{HTTP}/ready", timeout=timeout) as response:
            return response.status, time.monotonic() - began
    except urllib.error.HTTPError as error:
        return error.code, time.monotonic() - began
    except OSError:
        return 0, time.monotonic() - began


# ------------------------------------------------------------------ clients


def stack_outputs() -> dict[str, str]:
    """What the running `make dev` announces in its outputs file (as `cdk deploy --outputs-file`)."""
    return dict(next(iter(json.loads(OUTPUTS_FILE.read_text()).values())))


def stack_client(service: str, outputs: dict[str, str]) -> Any:
    """A boto3 client of the running stack's AWS endpoint, as the local administrator."""
    import boto3

    from local.moto_server import CREDENTIALS

    make_client: Any = boto3.client
    return make_client(service, region_name="us-east-1", endpoint_url=outputs["LocalAwsEndpoint"], **CREDENTIALS)


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


# ------------------------------------------------------------------ phases


async def endurance(stack: DevStack, args: argparse.Namespace, figures: dict[str, Any]) -> None:
    tokens = Tokens()
    everything = Subscriber([{"stream_type": "market_data"}], tokens.mint("endurance-all"))
    probe = Subscriber([{"stream_type": "market_data", "symbol": PROBE_SYMBOL}], tokens.mint("endurance-probe"))
    await everything.open()
    await probe.open()
    publisher = Publisher()
    loop = asyncio.get_running_loop()
    began = time.monotonic()
    end = began + args.minutes * 60
    samples: list[dict[str, Any]] = []
    ready_failures: list[dict[str, Any]] = []
    ready_times: list[float] = []
    probe_ms: list[float] = []
    probes_lost = 0
    ticks_per_minute: list[float] = []
    minute_started, minute_ticks = began, everything.total()
    next_sample = next_ready = next_probe = began
    while time.monotonic() < end:
        now = time.monotonic()
        if now >= next_sample:
            usage = await loop.run_in_executor(None, tree_usage, stack.process.pid)
            samples.append({"t": round(now - began, 1), **usage, "ticks": everything.total()})
            next_sample += args.sample_interval
        if now >= next_ready:
            status, took = await loop.run_in_executor(None, ready_status)
            ready_times.append(took)
            if status != 200:
                ready_failures.append({"t": round(now - began, 1), "status": status, "seconds": round(took, 2)})
            next_ready += args.ready_interval
        if now >= next_probe:
            event_id, sent = await loop.run_in_executor(None, publisher.publish, PROBE_SYMBOL)
            arrived = await probe.wait_for(event_id, 30)
            if arrived is None:
                probes_lost += 1
            else:
                probe_ms.append((arrived - sent) * 1000)
            next_probe += args.probe_interval
        if now - minute_started >= 60:
            total = everything.total()
            ticks_per_minute.append((total - minute_ticks) / (now - minute_started))
            minute_started, minute_ticks = now, total
            last = samples[-1]
            print(
                f"  {len(ticks_per_minute):>3} min  rss {last['rss_mib']:>7.1f} MiB  "
                f"cpu {last['cpu_seconds']:>7.1f} s  "
                f"ticks/s {ticks_per_minute[-1]:5.2f}  probe p50 {percentile(probe_ms[-2:], 0.5) or 0:6.0f} ms  "
                f"ready failures {len(ready_failures)}",
                flush=True,
            )
        await asyncio.sleep(0.2)
    await everything.close()
    await probe.close()

    after_first_minute = [s for s in samples if s["t"] >= 60] or samples
    baseline = after_first_minute[0]["rss_mib"]
    figures.update(
        endurance_minutes=args.minutes,
        endurance_rss_mib_first_minute=baseline,
        endurance_rss_by_kind_first_minute=after_first_minute[0]["by_kind"],
        endurance_rss_mib_end=samples[-1]["rss_mib"],
        endurance_rss_growth_mib_after_first_minute=round(max(s["rss_mib"] for s in after_first_minute) - baseline, 1),
        endurance_rss_by_kind_end=samples[-1]["by_kind"],
        endurance_ticks_per_second_first_minute=round(ticks_per_minute[0], 2) if ticks_per_minute else None,
        endurance_ticks_per_second_last_minute=round(ticks_per_minute[-1], 2) if ticks_per_minute else None,
        endurance_ticks_last_vs_first=(
            round(ticks_per_minute[-1] / ticks_per_minute[0], 3)
            if len(ticks_per_minute) > 1 and ticks_per_minute[0]
            else None
        ),
        endurance_ready_checks=len(ready_times),
        endurance_ready_not_200=len(ready_failures),
        endurance_ready_failures=ready_failures[:20],
        endurance_ready_seconds_max=round(max(ready_times), 3) if ready_times else None,
        endurance_probe_count=len(probe_ms),
        endurance_probes_lost=probes_lost,
        endurance_probe_p50_ms=_round(percentile(probe_ms, 0.5)),
        endurance_probe_p99_ms=_round(percentile(probe_ms, 0.99)),
        endurance_probe_max_ms=_round(max(probe_ms) if probe_ms else None),
        endurance_cpu_seconds_per_minute=round(
            (samples[-1]["cpu_seconds"] - after_first_minute[0]["cpu_seconds"])
            / max((samples[-1]["t"] - after_first_minute[0]["t"]) / 60, 1e-9),
            1,
        ),
        endurance_ticks_per_minute=[round(value, 2) for value in ticks_per_minute],
        endurance_rss_samples=[(s["t"], s["rss_mib"]) for s in samples],
    )


def local_stats() -> dict[str, Any]:
    """The running stack's `/local/stats`, signed as the local administrator (as `python -m local stats`)."""
    from local.signed_http import signed_request

    with urllib.request.urlopen(signed_request("GET", f"{HTTP}/local/stats", region="us-east-1"), timeout=30) as answer:
        return dict(json.loads(answer.read()))


def stats_between(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Cold starts by function and AWS calls by operation (all principals) between two `/local/stats`."""

    def calls(stats: dict[str, Any]) -> dict[str, int]:
        totals: dict[str, int] = {}
        for by_operation in stats["aws_calls"].values():
            for operation, count in by_operation.items():
                totals[operation] = totals.get(operation, 0) + count
        return totals

    def short(name: str) -> str:  # QuantTrade-prod-FunctionsConnectFunctionAA697F77-... -> Connect
        return name.split("Functions", 1)[-1].split("Function", 1)[0] or name

    cold = {
        short(name): usage.get("cold_starts", 0) - before["functions"].get(name, {}).get("cold_starts", 0)
        for name, usage in after["functions"].items()
    }
    was, now = calls(before), calls(after)
    return {
        "cold_starts": {name: count for name, count in cold.items() if count},
        "aws_calls": {op: now[op] - was.get(op, 0) for op in sorted(now) if now[op] - was.get(op, 0)},
    }


def cpu_by_kind(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    """CPU seconds each kind of process spent between two `tree_usage` readings (exited workers' are lost)."""
    kinds = after["by_kind"]
    return {
        kind: round(usage["cpu_seconds"] - before["by_kind"].get(kind, {}).get("cpu_seconds", 0.0), 1)
        for kind, usage in kinds.items()
    }


async def capacity(stack: DevStack, clients: int, events: int, figures: dict[str, Any], held: list[Subscriber]) -> None:
    tokens = Tokens()
    loop = asyncio.get_running_loop()
    at_start = await loop.run_in_executor(None, tree_usage, stack.process.pid)
    stats_at_start = await loop.run_in_executor(None, local_stats)
    stream = [{"stream_type": "market_data", "symbol": CAPACITY_SYMBOL}]
    new = [Subscriber(stream, tokens.mint(f"capacity-{len(held) + n}")) for n in range(clients - len(held))]
    began = time.monotonic()
    failures: dict[str, int] = {}
    for start in range(0, len(new), CONNECT_WAVE):
        wave = new[start : start + CONNECT_WAVE]
        wave_began = time.monotonic()
        outcomes = await asyncio.gather(*(client.open() for client in wave), return_exceptions=True)
        for client, outcome in zip(wave, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                failures[type(outcome).__name__] = failures.get(type(outcome).__name__, 0) + 1
            else:
                held.append(client)
        # Stay under the gateway's (API Gateway's) 500 new connections per second.
        await asyncio.sleep(max(0.0, len(wave) / 450 - (time.monotonic() - wave_began)))
    subscribed_seconds = time.monotonic() - began
    subscribed = await loop.run_in_executor(None, tree_usage, stack.process.pid)
    stats_subscribed = await loop.run_in_executor(None, local_stats)
    publisher = Publisher()
    latencies: list[float] = []
    incomplete = 0
    for _ in range(events):
        event_id, sent = await loop.run_in_executor(None, publisher.publish, CAPACITY_SYMBOL)
        arrivals = await asyncio.gather(*(client.wait_for(event_id, 30) for client in held))
        incomplete += sum(arrival is None for arrival in arrivals)
        latencies.extend((arrival - sent) * 1000 for arrival in arrivals if arrival is not None)
    delivered = await loop.run_in_executor(None, tree_usage, stack.process.pid)
    key = f"capacity_{clients}"
    figures.update(
        {
            f"{key}_subscribed": len(held),
            f"{key}_connect_failures": failures,
            f"{key}_connect_and_subscribe_seconds": round(subscribed_seconds, 2),
            f"{key}_events": events,
            f"{key}_deliveries_missing": incomplete,
            f"{key}_latency_p50_ms": _round(percentile(latencies, 0.5)),
            f"{key}_latency_p99_ms": _round(percentile(latencies, 0.99)),
            # Where the time went: the stack's CPU seconds by process kind, in each half of the step.
            f"{key}_connect_cpu_seconds_by_kind": cpu_by_kind(at_start, subscribed),
            f"{key}_events_cpu_seconds_by_kind": cpu_by_kind(subscribed, delivered),
            f"{key}_connect_work": stats_between(stats_at_start, stats_subscribed),
        }
    )
    print(
        f"  {clients} clients: subscribed in {subscribed_seconds:.1f} s, one event to all: "
        f"p50 {figures[key + '_latency_p50_ms']} ms p99 {figures[key + '_latency_p99_ms']} ms, missing {incomplete}\n"
        f"    CPU s by process while connecting {figures[key + '_connect_cpu_seconds_by_kind']}, "
        f"while delivering {figures[key + '_events_cpu_seconds_by_kind']}",
        flush=True,
    )


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


async def run_async(args: argparse.Namespace, stack: DevStack, figures: dict[str, Any]) -> None:
    if args.minutes > 0:
        await endurance(stack, args, figures)
    held: list[Subscriber] = []
    for clients in sorted(args.clients):
        await capacity(stack, clients, args.events, figures, held)
    if held:
        loop = asyncio.get_running_loop()
        seconds = await loop.run_in_executor(None, stack.interrupt)
        await asyncio.sleep(0)
        figures.update(
            stop_connections_held=len(held),
            stop_seconds=_round(seconds),
            stop_clients_closed_by_server=sum(client.closed_by_server for client in held),
        )
        print(f"  Ctrl-C with {len(held)} connected: stopped in {figures['stop_seconds']} s", flush=True)
        await asyncio.gather(*(client.close() for client in held))


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.endurance", description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--clients", type=int, nargs="*", default=[1000, 5000])
    parser.add_argument("--events", type=int, default=20, help="events per capacity step")
    parser.add_argument("--dev-args", default="", help="extra arguments for `python -m local dev`")
    parser.add_argument("--sample-interval", type=float, default=10.0)
    parser.add_argument("--ready-interval", type=float, default=5.0)
    parser.add_argument("--probe-interval", type=float, default=30.0)
    parser.add_argument("--output", type=Path, default=RESULTS, help="merged under the key --key")
    parser.add_argument("--key", default="endurance")
    args = parser.parse_args(argv)
    raise_fd_limit()
    figures: dict[str, Any] = {"command": "python -m bench.endurance " + " ".join(argv or sys.argv[1:])}
    figures["machine"] = machine.describe()
    log_path = ROOT / ".build" / f"bench-{args.key}-dev.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    stack = DevStack(shlex.split(args.dev_args), log_path)
    try:
        figures["start_seconds"] = round(stack.wait_ready(), 1)
        print(f"make dev ready in {figures['start_seconds']} s (pid {stack.process.pid})", flush=True)
        asyncio.run(run_async(args, stack, figures))
    finally:
        stack.kill()
    figures["machine"] = machine.at_end(figures["machine"])
    machine.merge_results(args.output, {args.key: figures})
    print(json.dumps({k: v for k, v in figures.items() if not k.endswith(("samples", "per_minute"))}, indent=2))
    return figures


if __name__ == "__main__":
    main()
