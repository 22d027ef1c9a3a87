"""`python -m bench.soak`: the run's options, its report, and its figures written with the machine they ran on."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import machine, soak
from bench.soak import scenario

RESULTS = Path(__file__).resolve().parent.parent / "soak-results.json"


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
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=(soak.__doc__ or "").split("\n")[0])
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
    figures = asyncio.run(scenario.soak(args))
    report(figures)
    machine_before["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results = {"command": command, "machine": machine_before, **figures}
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"written: {os.path.relpath(args.output, Path.cwd())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
