"""One audience size on one server: publish, wait until everyone has it, pool the latencies, summarise."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from bench.end_to_end.clients import Arrivals
from bench.measurement import percentile

DELIVERY_TIMEOUT = 30.0  # one publish must reach every client within this, or the run reports what arrived
# Quiet time after a publish reached everyone. A publish itself takes longer than the fan-out's 0.5 s audience
# cache, so every publish reads its audience afresh: "one PutEvents to N clients", not a hot stream's tick.
GAP_SECONDS = 0.3


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


def rate_ratio(numerator: dict[str, Any], denominator: dict[str, Any], digits: int = 2) -> float | None:
    """The ratio of two rounds' deliveries per second, when both have one."""
    top, bottom = numerator["deliveries_per_second"], denominator["deliveries_per_second"]
    return round(top / bottom, digits) if top and bottom else None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


async def measure(arrivals: Arrivals, audience: int, repeats: int, publish: Any, name: str, warmups: int = 0) -> Round:
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
