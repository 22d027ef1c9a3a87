"""bench/results.json holds one full `python -m bench` run beside the figures of benchmarks run on their own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.__main__ import separately_measured


def test_a_full_run_keeps_the_figures_of_benchmarks_run_on_their_own(tmp_path: Path) -> None:
    # GIVEN a results file with an earlier full run's figures and those of the benchmarks run on their own
    path = tmp_path / "results.json"
    earlier = {
        "command": "python -m bench",
        "end_to_end_1000_deliveries_per_second": 2347.9,
        "a_figure_no_longer_measured": 1,
        "endurance": {"command": "python -m bench.endurance --minutes 60"},
        "endurance_10x": {"command": "python -m bench.endurance --minutes 5 --key endurance_10x"},
        "coalescing_machine": {"cores": 2},
        "delivery_clients_command": "python -m bench.delivery_clients",
        "disconnects_1_streams": {"cpu_ms_per_disconnect": 15.5},
    }
    path.write_text(json.dumps(earlier), encoding="utf-8")

    # WHEN a full run asks what to keep THEN only the separately run benchmarks' keys are kept
    assert set(separately_measured(path)) == {
        "endurance",
        "endurance_10x",
        "coalescing_machine",
        "delivery_clients_command",
        "disconnects_1_streams",
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


def test_the_disconnect_benchmark_subscribes_each_client_to_as_many_distinct_streams_as_asked() -> None:
    from bench.disconnects import subscribe_frame
    from quanttrade_protocol.frames import Subscribe

    # WHEN clients are to hold five streams THEN their frame asks for five distinct ones, the service's own model
    # accepts it, and the first is the stream the other benchmarks publish to
    frame = subscribe_frame(5)
    streams = Subscribe.model_validate({**frame, "request_id": "r"}).streams
    assert len({(s.stream_type, s.symbol) for s in streams}) == 5
    assert frame["streams"][0] == {"stream_type": "market_data", "symbol": "BENCH"}


def test_the_disconnect_benchmark_reads_the_disconnect_functions_counters() -> None:
    from bench.disconnects import disconnect_counters

    stats = {
        "functions": {
            "FunctionsConnectFunctionAA697F77": {"invocations": 9, "in_flight": 0, "errors": 0},
            "FunctionsDisconnectFunction05B6DD4C": {"invocations": 7, "in_flight": 2, "errors": 1},
        }
    }
    assert disconnect_counters(stats) == (7, 2, 1)
    assert disconnect_counters({"error": "refused"}) == (0, 0, 0)
