"""bench/results.json holds one full `python -m bench` run beside the figures of benchmarks run on their own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.__main__ import separately_measured


def test_a_full_run_keeps_the_figures_of_benchmarks_run_on_their_own(tmp_path: Path) -> None:
    # GIVEN a results file with an earlier full run's figures and those of the hour-long and comparison benchmarks
    path = tmp_path / "results.json"
    earlier = {
        "command": "python -m bench",
        "end_to_end_1000_deliveries_per_second": 2347.9,
        "a_figure_no_longer_measured": 1,
        "endurance": {"command": "python -m bench.endurance --minutes 60"},
        "endurance_10x": {"command": "python -m bench.endurance --minutes 5 --key endurance_10x"},
        "coalescing_machine": {"cores": 2},
        "delivery_clients_command": "python -m bench.delivery_clients",
    }
    path.write_text(json.dumps(earlier), encoding="utf-8")

    # WHEN a full run asks what to keep THEN only the separately run benchmarks' keys are kept
    assert set(separately_measured(path)) == {
        "endurance",
        "endurance_10x",
        "coalescing_machine",
        "delivery_clients_command",
    }


def test_nothing_is_kept_from_a_missing_or_unreadable_file(tmp_path: Path) -> None:
    assert separately_measured(tmp_path / "absent.json") == {}
    broken = tmp_path / "broken.json"
    broken.write_text("{not json", encoding="utf-8")
    assert separately_measured(broken) == {}


def test_the_endurance_benchmark_refuses_a_key_a_full_run_would_not_keep(capsys: pytest.CaptureFixture[str]) -> None:
    from bench.endurance.__main__ import main

    with pytest.raises(SystemExit) as exited:
        main(["--key", "soak"])
    assert exited.value.code == 2
    assert "--key must start with 'endurance'" in capsys.readouterr().err
