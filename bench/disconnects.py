"""What a `$disconnect` costs on the local stack: subscribed clients close together, and every `$disconnect` runs.

    python -m bench.disconnects [--clients 1000] [--streams 1 5] [--output bench/results.json]

For each number of streams, a fresh stack (`bench.stack_server`, simulator off)
and `--clients` clients, each subscribed to that many streams, all closed at
once. Measured from the first close until the disconnect function has been
invoked once per client and has none in flight (the stack's own counters,
`/local/stats`): the time it took, and the stack's CPU per `$disconnect` by
kind of process (`/proc`, the clients' process not included). Then every
subscription row must be gone.

Why: Ctrl-C closes every connection and gives their `$disconnect`s a budget of
a few seconds. These figures say how many fit in it on this machine, and what
each DynamoDB call a `$disconnect` makes costs here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench import machine
from bench.child_process import ChildProcess
from bench.end_to_end.clients import SUBSCRIBE, SYMBOL, Arrivals, ClientPool
from bench.endurance.dev_stack import cpu_seconds_between, tree_usage
from bench.measurement import raise_fd_limit
from bench.stack_server import SECRET, stack_client, stack_stats

PREFIX = "disconnects_"  # this benchmark's keys in bench/results.json
CLIENTS = 1000
STREAMS = (1, 5)
DISCONNECT_DEADLINE = 300.0
POLL_SECONDS = 0.1
STACK_OPTIONS = {
    "simulator": False,
    "connect_rate_per_second": None,
    "sweep_interval": None,
    "idle_timeout": 3600.0,
}


def subscribe_frame(streams: int) -> dict[str, Any]:
    """The clients' subscribe: the benchmark's stream, and `streams - 1` other symbols."""
    wanted = [{"stream_type": "market_data", "symbol": SYMBOL}]
    wanted += [{"stream_type": "market_data", "symbol": f"{SYMBOL}{index}"} for index in range(1, streams)]
    return {**SUBSCRIBE, "streams": wanted}


def disconnect_counters(stats: dict[str, Any]) -> tuple[int, int, int]:
    """(invocations, in flight, errors) of the disconnect function, from `/local/stats`."""
    functions = stats.get("functions", {})
    counters: dict[str, Any] = next((c for name, c in functions.items() if "DisconnectFunction" in name), {})
    return int(counters.get("invocations", 0)), int(counters.get("in_flight", 0)), int(counters.get("errors", 0))


async def measure(clients: int, streams: int) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    with ChildProcess("stack", dict(STACK_OPTIONS)) as stack:
        http_url = stack.info["http_url"]
        count_rows = subscription_rows(stack.info)
        pool = ClientPool(
            stack.info["websocket_url"],
            Arrivals(),
            subscribe=True,
            token_secret=SECRET,
            subscribe_frame=subscribe_frame(streams),
        )
        setup = await pool.grow(clients)
        if setup["clients"] < clients:
            raise RuntimeError(f"only {setup['clients']} of {clients} clients could connect and subscribe")
        before_stats = await loop.run_in_executor(None, stack_stats, http_url)
        invoked_before, _, errors_before = disconnect_counters(before_stats)
        usage_before = tree_usage(stack.pid)
        started = time.monotonic()
        await pool.close()
        closed = time.monotonic() - started
        deadline = started + DISCONNECT_DEADLINE
        while True:
            stats = await loop.run_in_executor(None, stack_stats, http_url)
            invoked, in_flight, errors = disconnect_counters(stats)
            if (invoked - invoked_before >= clients and in_flight == 0) or time.monotonic() > deadline:
                break
            await asyncio.sleep(POLL_SECONDS)
        seconds = time.monotonic() - started
        usage_after = tree_usage(stack.pid)
        rows_left = await loop.run_in_executor(None, count_rows)
    by_kind = cpu_seconds_between(usage_before, usage_after)
    done = invoked - invoked_before
    return {
        "streams": streams,
        "clients": clients,
        "setup_seconds": setup["seconds"],
        "clients_closed_seconds": round(closed, 2),
        "disconnects": done,
        "disconnect_errors": errors - errors_before,
        "seconds": round(seconds, 2),
        "per_second": round(done / seconds, 1) if seconds > 0 else None,
        "cpu_ms_per_disconnect": round(1000 * sum(by_kind.values()) / max(done, 1), 1),
        "cpu_ms_per_disconnect_by_kind": {kind: round(1000 * cpu / max(done, 1), 1) for kind, cpu in by_kind.items()},
        "subscription_rows_left": rows_left,
    }


def subscription_rows(info: dict[str, Any]) -> Callable[[], int]:
    """A count of the stack's subscription rows (one counting Scan a call)."""
    client = stack_client("dynamodb", info["aws_endpoint_url"])
    table = info["subscriptions_table"]
    return lambda: int(client.scan(TableName=table, Select="COUNT", ConsistentRead=True)["Count"])


async def run_async(clients: int = CLIENTS, streams: Sequence[int] = STREAMS) -> dict[str, Any]:
    raise_fd_limit()
    figures: dict[str, Any] = {}
    for count in streams:
        result = await measure(clients, count)
        print(json.dumps(result), flush=True)
        figures[f"{PREFIX}{count}_streams"] = result
    return figures


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.disconnects", description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--clients", type=int, default=CLIENTS)
    parser.add_argument("--streams", type=int, nargs="+", default=list(STREAMS))
    parser.add_argument("--output", type=Path, help="merge the figures into this JSON file (bench/results.json)")
    args = parser.parse_args(argv)
    described = machine.describe()
    figures = asyncio.run(run_async(args.clients, args.streams))
    if args.output:
        command = f"python -m bench.disconnects --clients {args.clients} --streams {' '.join(map(str, args.streams))}"
        updates = {f"{PREFIX}command": command, f"{PREFIX}machine": machine.at_end(described), **figures}
        machine.merge_results(args.output, updates, dropping_prefix=PREFIX)
    return figures


if __name__ == "__main__":
    main()
