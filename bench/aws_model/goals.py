"""The issue's goals as scenarios of the model, for the design the stack ships."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from bench.aws_model.designs import SHIPPED
from bench.aws_model.figures import cost_per_million, percentile, rounded
from bench.aws_model.profiles import AWS
from bench.aws_model.scenario import make_scenario, run_scenario
from quanttrade_ws import topology


def goals() -> dict[str, Any]:
    """The issue's goals, each as scenarios of the model at default quotas, for the design the stack ships.

    Each reach goal is measured twice: from cold (the first event after idle pays the fan-out's and the
    delivery functions' cold starts) and with those environments initialised beforehand, as provisioned
    concurrency or steady traffic keeps them (1 fan-out, `topology.DELIVERY.max_concurrency` delivery).
    """
    warm = {"warm_fanout": 1, "warm_delivery": topology.DELIVERY.max_concurrency or 0}

    def times(audience: int, rate: float, events: int, **options: Any) -> list[float]:
        return run_scenario(replace(make_scenario(audience, rate, 1, events, SHIPPED), **options)).times_to_last()

    reach_10k, reach_10k_warm = times(10_000, 0.2, 10), times(10_000, 0.2, 10, **warm)
    reach_100k, reach_100k_warm = times(100_000, 0.05, 1), times(100_000, 0.05, 1, **warm)
    cost = run_scenario(make_scenario(1000, 5.0, 50, 40, SHIPPED))
    return {
        "design": SHIPPED,
        "delivery_max_concurrency": topology.DELIVERY.max_concurrency,
        "reach_10k_p50_s": rounded(percentile(reach_10k, 0.5)),
        "reach_10k_p99_s": rounded(percentile(reach_10k, 0.99)),
        "reach_10k_s_each_event": [rounded(t, 2) for t in reach_10k],
        "reach_10k_warm_p50_s": rounded(percentile(reach_10k_warm, 0.5)),
        "reach_10k_warm_p99_s": rounded(percentile(reach_10k_warm, 0.99)),
        "reach_100k_s": rounded(max(reach_100k, default=None)),
        "reach_100k_warm_s": rounded(max(reach_100k_warm, default=None)),
        "reach_100k_quota_bound_s": 100_000 / AWS.management_rate,
        "cost_audience_1000_per_million": rounded(cost_per_million(cost), 4),
    }
