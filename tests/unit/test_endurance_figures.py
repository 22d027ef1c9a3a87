"""The endurance benchmark tells a new execution environment from the same processes growing."""

from __future__ import annotations

from typing import Any

from bench.endurance.dev_stack import WORKERS
from bench.endurance.phases import environment_figures


def _sample(dev: float, moto: float, workers: float, environments: int) -> dict[str, Any]:
    return {
        "by_kind": {
            "dev process": {"rss_mib": dev, "processes": 1},
            "moto": {"rss_mib": moto, "processes": 1},
            WORKERS: {"rss_mib": workers, "processes": environments},
        }
    }


def test_an_environment_started_by_a_burst_is_counted_apart_from_growth() -> None:
    # GIVEN a run where one more environment (57 MiB) starts, idles out, and moto grows by 19 MiB meanwhile
    samples = [
        _sample(92.0, 104.0, 683.0, 17),
        _sample(93.0, 106.0, 740.0, 18),
        _sample(99.5, 123.0, 445.0, 13),
    ]

    # WHEN the figures are taken THEN the process counts show the environment, the single processes the growth
    assert environment_figures(samples) == {
        "endurance_processes_first_minute": 19,
        "endurance_processes_peak": 20,
        "endurance_processes_end": 15,
        "endurance_rss_growth_mib_dev_and_moto_after_first_minute": 26.5,
    }


def test_a_run_that_shrinks_reports_no_growth_and_its_process_counts() -> None:
    samples = [_sample(90.0, 100.0, 600.0, 10), _sample(89.0, 100.0, 500.0, 8)]

    figures = environment_figures(samples)

    assert figures["endurance_rss_growth_mib_dev_and_moto_after_first_minute"] == 0.0
    assert figures["endurance_processes_peak"] == 12
    assert figures["endurance_processes_end"] == 10
