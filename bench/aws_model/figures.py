"""Figures of one run: percentiles, cost per million deliveries, utilisation and what saturates first."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from bench.aws_model.profiles import AWS, LOCAL, Profile
from bench.aws_model.scenario import Outcome
from bench.cost import PRICES


def percentile(values: Sequence[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


def cost_per_million(outcome: Outcome) -> float | None:
    """Dollars per million deliveries, at bench/cost.py's list prices."""
    tally = outcome.tally
    if not tally.deliveries:
        return None
    dollars = (
        tally.posts * PRICES["apigw_message"]
        + sum(tally.lambda_seconds.values()) * PRICES["lambda_gb_second_arm64"]
        + sum(tally.invocations.values()) * PRICES["lambda_request"]
        + tally.sqs_requests * PRICES["sqs_fifo_request"]
        + tally.eventbridge_events * PRICES["eventbridge_event"]
        + tally.pipe_requests * 0.40 / 1e6
        + tally.read_units * PRICES["dynamodb_read_unit"]
        + tally.write_units * PRICES["dynamodb_write_unit"]
    )
    return dollars / tally.deliveries * 1e6


def saturation(outcome: Outcome, profile: Profile) -> dict[str, float]:
    """Utilisation of each limited resource while events were being delivered (1.0 = at its limit)."""
    tally = outcome.tally
    active = max((e.last_delivery for e in outcome.events), default=0.0) or outcome.simulated_seconds
    active = max(active, 1e-9)
    posting = max(tally.last_post - tally.first_post, 1e-9)
    return {
        # Tokens granted while posts were going out, over what the account's bucket gives in that time.
        "management_api_quota": tally.posts / posting / profile.management_rate if tally.posts > 1 else 0.0,
        "fifo_message_group": max(tally.group_busy.values(), default=0.0) / active,
        "sqs_send_quota": tally.send_wait / active,
        "dynamodb_partition": tally.partition_wait / active,
        "lambda_concurrency": max(tally.peak_concurrency.values(), default=0) / profile.account_concurrency,
    }


def first_limit(outcome: Outcome, usage: dict[str, float]) -> str:
    """The resource that gives out first: posts failing under throttling say it louder than utilisation."""
    if outcome.tally.failed_posts:
        return "management_api_quota (throttled posts failed, chunks redelivered)"
    name = max(usage, key=lambda key: usage[key])
    return name if usage[name] >= 0.5 else "none (below half of every limit)"


def summarise(outcome: Outcome, sustained: float | None = None) -> dict[str, Any]:
    profile = AWS if outcome.scenario.profile == "aws" else LOCAL
    times = outcome.times_to_last()
    usage = saturation(outcome, profile)
    return {
        "audience": outcome.scenario.audience,
        "events_per_second": outcome.scenario.rate,
        "symbols": outcome.scenario.symbols,
        "design": outcome.scenario.design,
        "events_simulated": outcome.scenario.events,
        "events_complete": len(times),
        "time_to_last_delivery_p50_s": rounded(percentile(times, 0.5)),
        "time_to_last_delivery_p99_s": rounded(percentile(times, 0.99)),
        "sustained_events_per_second": rounded(sustained),
        "backlog_grows": sustained is not None and sustained < outcome.scenario.rate,
        "peak_lambda_concurrency": dict(outcome.tally.peak_concurrency),
        "cost_per_million_deliveries": rounded(cost_per_million(outcome), 4),
        "saturates_first": first_limit(outcome, usage),
        "utilisation": {name: rounded(value, 3) for name, value in usage.items()},
        "posts": outcome.tally.posts,
        "deliveries": outcome.tally.deliveries,
        "throttled_attempts": outcome.tally.throttled,
        "failed_posts": outcome.tally.failed_posts,
        "redelivered_records": outcome.tally.redelivered_records,
        "transaction_conflicts": outcome.tally.transaction_conflicts,
        "cold_starts": outcome.tally.cold_starts,
        "simulated_seconds": rounded(outcome.simulated_seconds),
        "wall_seconds": rounded(outcome.wall_seconds),
    }


def rounded(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)
