"""The local profile checked against the local stack's end-to-end figures."""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict
from typing import Any

from bench.aws_model.figures import percentile
from bench.aws_model.profiles import AUDIENCE_QUERY_MS, STACK_CPU_PER_1000_DELIVERIES, local_profile
from bench.aws_model.scenario import Scenario, run_scenario


def validate(results_path: str) -> dict[str, Any]:
    """The local profile, with that run's own Query and CPU figures, against bench/results.json's end_to_end_1000_*."""
    measured = json.load(open(results_path))  # noqa: SIM115
    profile = local_profile(measured)
    outcome = run_scenario(
        Scenario(1000, 0.5, 1, 20, design="source_group", profile="local", keep_latencies=True),
        horizon=600,
        profile=profile,
    )
    latencies = outcome.latencies or []
    times = outcome.times_to_last()
    model = {
        "latency_p50_ms": round(1000 * (percentile(latencies, 0.5) or 0), 1),
        "latency_p99_ms": round(1000 * (percentile(latencies, 0.99) or 0), 1),
        "deliveries_per_second": round(1000 / statistics.median(times), 1) if times else None,
    }
    comparison: dict[str, Any] = {}
    for name, value in model.items():
        local = measured.get(f"end_to_end_1000_{name}")
        comparison[name] = {
            "local": local,
            "model": value,
            "error_percent": round(100 * (value - local) / local, 1) if local and value else None,
        }
    comparison["within_25_percent"] = all(
        abs(entry["error_percent"]) <= 25 for entry in comparison.values() if isinstance(entry, dict)
    )
    machine = measured.get("machine") or {}
    comparison["calibration"] = {
        "from": {key: measured[key] for key in (STACK_CPU_PER_1000_DELIVERIES, AUDIENCE_QUERY_MS)},
        "run": {key: machine.get(key) for key in ("git_commit", "date", "reference_work_ms")},
        "profile": asdict(profile),
    }
    return comparison
