"""Each ordering design's throughput with one subscriber an event, on many symbols and on one hot symbol."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bench.aws_model.figures import percentile, rounded
from bench.aws_model.scenario import Scenario, run_scenario


def throughput(design: str, symbols: int, offered: float = 1500.0, events: int = 3000) -> dict[str, Any]:
    """Market-data events per second a design keeps up with when each event has one subscriber.

    One subscriber keeps the Management API far from its quota, so what is measured is
    the pipeline: queue quotas, message groups, concurrency, the stream heads.
    """
    outcome = run_scenario(Scenario(1, offered, symbols, events, design))
    finish = sorted(e.last_delivery for e in outcome.complete())
    half = len(finish) // 2
    rate = (
        (len(finish) - half) / (finish[-1] - finish[half - 1]) if half >= 1 and finish[-1] > finish[half - 1] else 0.0
    )
    times = outcome.times_to_last()
    return {
        "offered_events_per_second": offered,
        "complete_events": len(finish),
        "events_per_second": rounded(min(rate, offered)),
        "time_to_last_delivery_p50_s": rounded(percentile(times, 0.5)),
        "time_to_last_delivery_p99_s": rounded(percentile(times, 0.99)),
        "peak_lambda_concurrency": dict(outcome.tally.peak_concurrency),
        "transaction_conflicts": outcome.tally.transaction_conflicts,
        "redelivered_records": outcome.tally.redelivered_records,
        "queue_send_wait_s": rounded(outcome.tally.send_wait),
    }


def design_comparison(designs: Sequence[str]) -> dict[str, Any]:
    """Each ordering design on 500 symbols and on one hot symbol, 1,500 events/s offered."""
    return {design: {"500_symbols": throughput(design, 500), "1_symbol": throughput(design, 1)} for design in designs}
