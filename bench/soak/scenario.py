"""The soak run: the stack in a child process, held clients under feed, pings, a burst and abuse; its figures."""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter
from typing import Any

from bench import machine
from bench.child_process import ChildProcess
from bench.measurement import raise_fd_limit
from bench.soak.abuse import abuser, summarise_abuse
from bench.soak.accounting import drain, latencies, messages_lost
from bench.soak.clients import Tally
from bench.soak.load import burst, connect_held, feed, pinger
from bench.stack_server import events_client, stack_stats

DRAIN_DEADLINE = 120.0


def _mib(value: int | None) -> float | None:
    return None if value is None else round(value / 2**20, 1)


async def soak(args: argparse.Namespace) -> dict[str, Any]:
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

        events = await loop.run_in_executor(None, events_client, stack.info["aws_endpoint_url"])
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
