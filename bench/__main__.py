"""`python -m bench` (what `make bench` runs): every benchmark, one table, bench/results.json.

    python -m bench                          all of them: delivery_worker, dynamodb_work, audience_cpu, cost,
                                             cold_start, lambda_runtime, end_to_end
    python -m bench end_to_end               a subset (written to bench/results-end_to_end.json)
    python -m bench end_to_end --repeats 5   fewer publishes per audience size
    python -m bench --output /tmp/r.json     write elsewhere

Benchmarks print numbers, not pass/fail: a missed target is reported in the
table and in the JSON, and the exit status is non-zero only when a benchmark
could not run at all. A subset never overwrites bench/results.json, so that
file always holds one complete run from one machine and one commit;
`python -m bench.endurance` (an hour, not part of this), `bench.coalescing`,
`bench.delivery_clients` and `bench.disconnects` add their figures to it under keys of their own
(`endurance...`, `coalescing_...`, `delivery_clients_...`, `disconnects_...`), each with its own
machine section and command, and leave the rest alone; a full run here replaces
only its own figures and keeps theirs (`separately_measured`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import machine

ROOT = Path(__file__).resolve().parent.parent


# Cold start first, on a quiet machine; end to end last, as it is the longest and the busiest.
ORDER = ("cold_start", "lambda_runtime", "delivery_worker", "dynamodb_work", "audience_cpu", "cost", "end_to_end")
NEEDS = {"cost": ("delivery_worker", "dynamodb_work")}


@dataclass(frozen=True)
class Target:
    text: str
    met: Callable[[float], bool]


def _at_least(bound: float) -> Target:
    return Target(f">= {bound:g}", lambda value: value >= bound)


def _below(bound: float) -> Target:
    return Target(f"< {bound:g}", lambda value: value < bound)


# Targets from the issue and the architecture guide; figures without one are reported for what they are.
TARGETS: dict[str, Target] = {
    "delivery_vs_baseline_ratio": _at_least(5),
    "end_to_end_1000_ratio_to_ceiling": _at_least(0.2),
    "end_to_end_5000_ratio_to_ceiling": _at_least(0.2),
    "end_to_end_1000_latency_p99_ms": _below(100),
    "end_to_end_1000_ratio_to_samples_pattern": _at_least(5),
    "end_to_end_5000_ratio_to_samples_pattern": _at_least(5),
    "dynamodb_scans_on_hot_path": Target("0", lambda value: value == 0),
    "delivery_failed": Target("0", lambda value: value == 0),
    "end_to_end_1000_incomplete": Target("0", lambda value: value == 0),
    "end_to_end_5000_incomplete": Target("0", lambda value: value == 0),
    "end_to_end_service_clients_closed_early": Target("0", lambda value: value == 0),
}
# Fan-out must cost in proportion to the event's audience, not to the connections in the system.
AUDIENCE_BOUND = ("dynamodb_calls_per_event_10k_connections", "dynamodb_calls_per_event_10_subscribers")
ITEMS_BOUND = ("dynamodb_items_read_per_event_10k_connections", "dynamodb_items_read_per_event_10_subscribers")

UNITS = (
    # (fragment, unit, where the fragment must be): first match wins
    ("_percent", "%", "end"),
    ("cost_per_million_", "USD / 1M msgs", "start"),
    ("_per_event", "per event", "inside"),
    ("_ms", "ms", "end"),
    ("_per_cpu_second", "posts / CPU s", "end"),
    ("_microseconds_per_post", "us / post", "end"),
    ("_microseconds_per_audience_row", "us / row", "end"),
    ("_cpu_seconds_per_1000_deliveries", "CPU s / 1k msgs", "end"),
    ("_per_second", "/ s", "end"),
    ("_seconds", "s", "end"),
    ("_bytes", "bytes", "end"),
    ("_ratio", "x", "end"),
    ("_ratio_to_ceiling", "x", "end"),
    ("_cpu_share_service", "of a core", "end"),
    ("_cpu_share_ceiling", "of a core", "end"),
)


def unit_of(name: str) -> str:
    for fragment, unit, where in UNITS:
        if (
            (where == "end" and name.endswith(fragment))
            or (where == "start" and name.startswith(fragment))
            or (where == "inside" and fragment in name)
        ):
            return unit
    return "count"


# ------------------------------------------------------------------ running


def run_delivery_worker(_: dict[str, Any], options: argparse.Namespace) -> dict[str, Any]:
    from bench import delivery_worker

    return delivery_worker.run(messages=options.messages)


def run_dynamodb_work(_: dict[str, Any], options: argparse.Namespace) -> dict[str, Any]:
    from bench import dynamodb_work

    return dynamodb_work.run()


def run_audience_cpu(_: dict[str, Any], options: argparse.Namespace) -> dict[str, Any]:
    from bench import audience_cpu

    return audience_cpu.run()


def run_cost(figures: dict[str, Any], options: argparse.Namespace) -> dict[str, Any]:
    from bench import cost, dynamodb_work

    # dynamodb_work counts calls over all of its EVENTS events; cost wants them per event.
    totals = figures["dynamodb_calls_by_operation_10k"]
    per_event = {operation: calls / dynamodb_work.EVENTS for operation, calls in totals.items()}
    cpu_seconds_per_message = 1.0 / figures["delivery_posts_per_cpu_second"]
    result = cost.run(per_event, cpu_seconds_per_message)
    result["cost_inputs"] = {
        "dynamodb_calls_per_event": per_event,
        "cpu_seconds_per_message": cpu_seconds_per_message,
    }
    return result


def run_cold_start(_: dict[str, Any], options: argparse.Namespace) -> dict[str, Any]:
    from bench import cold_start

    return cold_start.run()


def run_lambda_runtime(_: dict[str, Any], options: argparse.Namespace) -> dict[str, Any]:
    from bench import lambda_runtime

    return lambda_runtime.run()


def run_end_to_end(_: dict[str, Any], options: argparse.Namespace) -> dict[str, Any]:
    from bench.end_to_end import scenario

    figures = scenario.run(options.audiences, options.repeats)
    for audience in options.audiences:
        expected = figures.get(f"end_to_end_{audience}_expected")
        delivered = figures.get(f"end_to_end_{audience}_delivered")
        if expected is not None and delivered is not None:
            figures[f"end_to_end_{audience}_incomplete"] = expected - delivered
    return figures


RUNNERS: dict[str, Callable[[dict[str, Any], argparse.Namespace], dict[str, Any]]] = {
    "delivery_worker": run_delivery_worker,
    "dynamodb_work": run_dynamodb_work,
    "audience_cpu": run_audience_cpu,
    "cost": run_cost,
    "cold_start": run_cold_start,
    "lambda_runtime": run_lambda_runtime,
    "end_to_end": run_end_to_end,
}


def plan(requested: Sequence[str]) -> list[str]:
    """The benchmarks to run, in ORDER, with what a requested one needs as input."""
    wanted = set(requested or ORDER)
    for name in list(wanted):
        wanted.update(NEEDS.get(name, ()))
    return [name for name in ORDER if name in wanted]


def run_all(names: Sequence[str], options: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    figures: dict[str, Any] = {}
    runs: dict[str, Any] = {}
    for name in names:
        missing = [need for need in NEEDS.get(name, ()) if runs.get(need, {}).get("status") != "ok"]
        if missing:
            runs[name] = {"status": f"skipped: {', '.join(missing)} did not run", "seconds": 0.0}
            continue
        print(f"== {name}", flush=True)
        started = time.perf_counter()
        try:
            produced = RUNNERS[name](figures, options)
        except Exception as error:
            traceback.print_exc()
            runs[name] = {"status": f"failed: {type(error).__name__}: {error}"}
        else:
            figures.update(produced)
            runs[name] = {"status": "ok"}
        runs[name]["seconds"] = round(time.perf_counter() - started, 1)
        print(f"== {name}: {runs[name]['status']} in {runs[name]['seconds']}s", flush=True)
    return figures, runs


# ------------------------------------------------------------------ reporting


def verdicts(figures: dict[str, Any]) -> dict[str, dict[str, Any]]:
    judged: dict[str, dict[str, Any]] = {}
    for name, target in TARGETS.items():
        value = figures.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            judged[name] = {"target": target.text, "met": bool(target.met(float(value)))}
    for crowded, quiet in (AUDIENCE_BOUND, ITEMS_BOUND):
        if isinstance(figures.get(crowded), int | float) and isinstance(figures.get(quiet), int | float):
            judged[crowded] = {
                "target": f"= {figures[quiet]:g} (as with 10 subscribers alone)",
                "met": math.isclose(figures[crowded], figures[quiet], rel_tol=0.01),
            }
    return judged


def table_rows(figures: dict[str, Any], judged: dict[str, dict[str, Any]]) -> list[tuple[str, str, str, str, str]]:
    rows = []
    for name, value in figures.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue  # nested detail (prices, stats, counters by operation) stays in the JSON
        verdict = judged.get(name)
        shown = f"{value:,.4f}".rstrip("0").rstrip(".") if isinstance(value, float) else f"{value:,}"
        rows.append(
            (
                name,
                shown,
                unit_of(name),
                verdict["target"] if verdict else "",
                ("yes" if verdict["met"] else "NO") if verdict else "",
            )
        )
    return rows


def print_table(rows: list[tuple[str, str, str, str, str]], runs: dict[str, Any]) -> None:
    header = ("figure", "value", "unit", "target", "met?")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(5)]
    line = "  ".join("-" * width for width in widths)
    print()
    print("  ".join(h.ljust(w) if i != 1 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths, strict=True))))
    print(line)
    for row in rows:
        cells = [cell.rjust(widths[i]) if i == 1 else cell.ljust(widths[i]) for i, cell in enumerate(row)]
        print("  ".join(cells).rstrip())
    print(line)
    for name, run in runs.items():
        print(f"{name}: {run['status']} ({run['seconds']}s)")


def output_path(requested: Sequence[str], given: str | None) -> Path:
    if given:
        return Path(given)
    if not requested or set(requested) == set(ORDER):
        return ROOT / "bench" / "results.json"
    return ROOT / "bench" / f"results-{'-'.join(sorted(set(requested)))}.json"


def separately_measured(path: Path) -> dict[str, Any]:
    """The figures in `path` of the benchmarks that run on their own and merge into the results file
    (`bench.endurance`, an hour; `bench.coalescing`; `bench.delivery_clients`; `bench.disconnects`), which a run
    of this one keeps: it replaces only its own."""
    from bench.coalescing import PREFIX as COALESCING
    from bench.delivery_clients import PREFIX as DELIVERY_CLIENTS
    from bench.disconnects import PREFIX as DISCONNECTS
    from bench.endurance import RESULTS_KEY as ENDURANCE

    if not path.exists():
        return {}
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return {}
    prefixes = (ENDURANCE, COALESCING, DELIVERY_CLIENTS, DISCONNECTS)
    return {key: value for key, value in previous.items() if key.startswith(prefixes)}


def main(argv: Sequence[str] | None = None) -> int:
    from bench.end_to_end.scenario import AUDIENCES, REPEATS

    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("benchmarks", nargs="*", metavar="BENCHMARK", help=f"any of: {', '.join(ORDER)} (default: all)")
    parser.add_argument("--output", help="where to write the JSON (default bench/results.json for a full run)")
    parser.add_argument("--repeats", type=int, default=REPEATS, help=f"end_to_end publishes per size ({REPEATS})")
    parser.add_argument("--audiences", type=int, nargs="+", default=list(AUDIENCES), help="end_to_end client counts")
    parser.add_argument("--messages", type=int, default=20_000, help="delivery_worker posts (20000)")
    args = parser.parse_args(argv)
    for name in args.benchmarks:
        if name not in ORDER:
            parser.error(f"unknown benchmark {name!r}; one of {', '.join(ORDER)}")

    command = " ".join(["python -m bench", *(sys.argv[1:] if argv is None else argv)])
    names = plan(args.benchmarks)
    # Described before the run, so the load average is other work's, not ours.
    machine_before = machine.describe()
    started = time.perf_counter()
    figures, runs = run_all(names, args)
    judged = verdicts(figures)
    print_table(table_rows(figures, judged), runs)
    total = round(time.perf_counter() - started, 1)
    print(f"total: {total}s")

    results: dict[str, Any] = {
        "command": command,
        "machine": machine.at_end(machine_before),
        "total_seconds": total,
        "benchmarks": runs,
        "targets": judged,
        **figures,
    }
    path = output_path(args.benchmarks, args.output)
    results.update(separately_measured(path))
    path.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    print(f"written: {os.path.relpath(path, Path.cwd())}")
    return 0 if all(run["status"] == "ok" for run in runs.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
