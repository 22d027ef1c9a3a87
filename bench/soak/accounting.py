"""What the held clients received, counted: messages lost or late, publish-to-receive latencies, the drain."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench.measurement import percentile
from bench.soak.clients import HeldClient


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
