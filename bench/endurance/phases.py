"""The endurance benchmark's phases: hours of `make dev` with a subscriber and a probe, then capacity steps."""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import time
from typing import Any

from bench.endurance.clients import Publisher, Subscriber, Tokens
from bench.endurance.dev_stack import (
    WORKERS,
    DevStack,
    cpu_by_kind,
    cpu_seconds_between,
    local_stats,
    ready_status,
    stats_between,
    tree_usage,
)
from bench.machine import reference_work_ms
from bench.measurement import percentile

PROBE_SYMBOL = "PROBE"
CAPACITY_SYMBOL = "CAPA"
CONNECT_WAVE = 250  # under the gateway's 500 new connections per second


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
    probe_times: list[str] = []  # when each probe was sent (UTC): a slow one can be looked up in the dev log
    probes_lost = 0
    ticks_per_minute: list[float] = []
    minute_started, minute_ticks = began, everything.total()
    # Each minute's CPU by process kind, and the machine's speed then (see `reference_work_ms`): a rise in the
    # first with none in the second is the stack doing more.
    cpu_per_minute: list[dict[str, float]] = []
    reference_per_minute: list[float] = []
    minute_sample = 0
    next_sample = next_ready = next_probe = began
    while time.monotonic() < end:
        now = time.monotonic()
        if now >= next_sample:
            usage = await loop.run_in_executor(None, tree_usage, stack.process.pid)
            samples.append(
                {"t": round(now - began, 1), **usage, "ticks": everything.total(), "reference_ms": reference_work_ms()}
            )
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
                probe_times.append(time.strftime("%H:%M:%S", time.gmtime(sent)))
            next_probe += args.probe_interval
        if now - minute_started >= 60:
            total = everything.total()
            ticks_per_minute.append((total - minute_ticks) / (now - minute_started))
            minute_started, minute_ticks = now, total
            last = samples[-1]
            cpu_per_minute.append(cpu_by_kind(samples[minute_sample], last))
            reference_per_minute.append(round(statistics.median(s["reference_ms"] for s in samples[minute_sample:]), 1))
            minute_sample = len(samples) - 1
            processes = process_count(last)
            print(
                f"  {len(ticks_per_minute):>3} min  rss {last['rss_mib']:>7.1f} MiB  pss {last['pss_mib']:>7.1f} MiB  "
                f"cpu {last['cpu_seconds']:>7.1f} s  processes {processes:.0f}  "
                f"ticks/s {ticks_per_minute[-1]:5.2f}  probe p50 {percentile(probe_ms[-2:], 0.5) or 0:6.0f} ms  "
                f"ready failures {len(ready_failures)}  cpu/min {cpu_per_minute[-1]}  "
                f"reference {reference_per_minute[-1]} ms",
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
        # The peak over the run against the first minute; and where the run ended, since environments a burst
        # started are shut down again after their idle limit (a peak can be a burst, an end above it a leak).
        endurance_rss_growth_mib_after_first_minute=round(max(s["rss_mib"] for s in after_first_minute) - baseline, 1),
        endurance_rss_change_mib_end_vs_first_minute=round(samples[-1]["rss_mib"] - baseline, 1),
        endurance_rss_by_kind_end=samples[-1]["by_kind"],
        **environment_figures(after_first_minute),
        # Forked execution environments share their template's pages: PSS counts those once.
        endurance_pss_mib_first_minute=after_first_minute[0]["pss_mib"],
        endurance_pss_mib_end=samples[-1]["pss_mib"],
        endurance_pss_growth_mib_after_first_minute=round(
            max(s["pss_mib"] for s in after_first_minute) - after_first_minute[0]["pss_mib"], 1
        ),
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
        # The slowest five, (when sent, milliseconds), to look up in the dev log.
        endurance_probe_slowest=sorted(
            zip(probe_times, (_round(ms) for ms in probe_ms), strict=True), key=lambda p: -(p[1] or 0)
        )[:5],
        endurance_cpu_seconds_per_minute=round(
            (samples[-1]["cpu_seconds"] - after_first_minute[0]["cpu_seconds"])
            / max((samples[-1]["t"] - after_first_minute[0]["t"]) / 60, 1e-9),
            1,
        ),
        endurance_ticks_per_minute=[round(value, 2) for value in ticks_per_minute],
        endurance_cpu_seconds_by_kind_per_minute=cpu_per_minute,
        endurance_reference_work_ms_per_minute=reference_per_minute,
        endurance_rss_samples=[(s["t"], s["rss_mib"]) for s in samples],
    )


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
    by_event: list[dict[str, Any]] = []  # figures, and CPU by kind, of each event
    incomplete = 0
    for _ in range(events):
        cpu_before = await loop.run_in_executor(None, tree_usage, stack.process.pid)
        clients_cpu_before = time.process_time()
        event_id, sent = await loop.run_in_executor(None, publisher.publish, CAPACITY_SYMBOL)
        arrivals = await asyncio.gather(*(client.wait_for(event_id, 30) for client in held))
        clients_cpu = time.process_time() - clients_cpu_before
        cpu_after = await loop.run_in_executor(None, tree_usage, stack.process.pid)
        stack_cpu = cpu_seconds_between(cpu_before, cpu_after)
        incomplete += sum(arrival is None for arrival in arrivals)
        event_ms = [(arrival - sent) * 1000 for arrival in arrivals if arrival is not None]
        latencies.extend(event_ms)
        # A few events make the p99: each one's own figures tell a slow event from a slow step.
        by_event.append(
            {
                "p50": _round(percentile(event_ms, 0.5)),
                "p99": _round(percentile(event_ms, 0.99)),
                "max": _round(max(event_ms, default=None)),
                "stack_cpu_ms": round(sum(stack_cpu.values()) * 1000),
                # Which process spent the event's time: a slow event told apart from a costly one.
                "cpu_ms_by_kind": {
                    **{kind: round(seconds * 1000) for kind, seconds in stack_cpu.items()},
                    "benchmark (clients, publisher)": round(clients_cpu * 1000),
                },
            }
        )
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
            f"{key}_latency_ms_by_event": by_event,
            # Where the time went: the stack's CPU seconds by process kind, in each half of the step.
            f"{key}_connect_cpu_seconds_by_kind": cpu_by_kind(at_start, subscribed),
            f"{key}_events_cpu_seconds_by_kind": cpu_by_kind(subscribed, delivered),
            f"{key}_connect_work": stats_between(stats_at_start, stats_subscribed),
        }
    )
    print(
        f"  {clients} clients: subscribed in {subscribed_seconds:.1f} s, one event to all: "
        f"p50 {figures[key + '_latency_p50_ms']} ms p99 {figures[key + '_latency_p99_ms']} ms, missing {incomplete}; "
        f"p99 by event {[event['p99'] for event in by_event]} ms, the stack's CPU by event "
        f"{[event['stack_cpu_ms'] for event in by_event]} ms\n"
        f"    CPU s by process while connecting {figures[key + '_connect_cpu_seconds_by_kind']}, "
        f"while delivering {figures[key + '_events_cpu_seconds_by_kind']}",
        flush=True,
    )


def process_count(sample: dict[str, Any]) -> int:
    """How many of the stack's processes a `tree_usage` sample found, of every kind."""
    return int(sum(kind["processes"] for kind in sample["by_kind"].values()))


def environment_figures(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """How many processes the stack ran over `samples` (from the first minute on), and the memory of those that
    are one process each (the dev process and moto).

    The summed RSS rises by a whole environment (about 57 MiB) when concurrency starts one, as Lambda
    does, and falls when it idles out: these tell that from the same processes growing.
    """

    def single_processes_rss(sample: dict[str, Any]) -> float:
        return float(sum(kind["rss_mib"] for name, kind in sample["by_kind"].items() if name != WORKERS))

    first = samples[0]
    return {
        "endurance_processes_first_minute": process_count(first),
        "endurance_processes_peak": max(process_count(sample) for sample in samples),
        "endurance_processes_end": process_count(samples[-1]),
        "endurance_rss_growth_mib_dev_and_moto_after_first_minute": round(
            max(single_processes_rss(sample) for sample in samples) - single_processes_rss(first), 1
        ),
    }


def disconnects_finished(log: str) -> int | None:
    """How many `$disconnect`s finished within the stop's budget, as the gateway's stop logged it."""
    found = None
    for match in re.finditer(r"\$disconnect finished for (\d+) of \d+ connections|(\d+) connections closed, each", log):
        found = int(match.group(1) or match.group(2))
    return found


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
            stop_disconnects_finished=disconnects_finished(stack.log_tail(10**9)),  # after every line of the stop
        )
        print(
            f"  Ctrl-C with {len(held)} connected: stopped in {figures['stop_seconds']} s, "
            f"$disconnect finished for {figures['stop_disconnects_finished']}",
            flush=True,
        )
        await asyncio.gather(*(client.close() for client in held))
