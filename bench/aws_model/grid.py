"""The audience x rate x symbols grid, each input with the rate its design sustains, and its markdown table."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from bench.aws_model.designs import SHIPPED
from bench.aws_model.figures import summarise
from bench.aws_model.profiles import AWS
from bench.aws_model.scenario import make_scenario, run_scenario


def sustained_rate(audience: int, symbols: int, design: str, max_deliveries: int) -> float:
    """Events per second the design keeps up with: complete events / time, under a saturating offer."""
    events = max(3, min(400, max_deliveries // audience))
    # Offered at three times what the account's Management API quota could carry: enough to build a
    # backlog everywhere, without simulating a retry storm that tells nothing more.
    offered = min(5000.0, 3 * AWS.management_rate / audience)
    outcome = run_scenario(make_scenario(audience, offered, symbols, events, design))
    complete = outcome.complete()
    if not complete:
        return 0.0
    # Completed events over the whole run, from the first publish: the pipeline's fill time counts
    # against it, so it is a lower bound (a few percent for 3 events of 100,000 subscribers).
    return len(complete) / max(e.last_delivery for e in complete)


def events_for(audience: int, rate: float, max_deliveries: int, seconds: float) -> int:
    return int(max(2, min(rate * seconds, max_deliveries // audience)))


AUDIENCES = (1_000, 10_000, 100_000)
RATES = (1.0, 10.0, 100.0, 1000.0)
SYMBOLS = (1, 50, 500)


def grid(designs: Sequence[str], max_deliveries: int, seconds: float, log: Callable[[str], None]) -> list[dict]:
    rows = []
    for design in designs:
        for audience in AUDIENCES:
            for symbols in SYMBOLS:
                sustained = sustained_rate(audience, symbols, design, max_deliveries)
                for rate in RATES:
                    scenario = make_scenario(
                        audience, rate, symbols, events_for(audience, rate, max_deliveries, seconds), design
                    )
                    row = summarise(run_scenario(scenario), sustained)
                    rows.append(row)
                    log(
                        f"{design:13} audience {audience:>7,} {rate:>6g}/s over {symbols:>3} symbols: "
                        f"last delivery p50 {row['time_to_last_delivery_p50_s']} s p99 "
                        f"{row['time_to_last_delivery_p99_s']} s, sustained {row['sustained_events_per_second']}/s, "
                        f"${row['cost_per_million_deliveries']}/M, first: {row['saturates_first']} "
                        f"({row['wall_seconds']} s)"
                    )
    return rows


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The grid as one markdown table: the design before (one group per source) beside the shipped one, per input."""
    by_input: dict[tuple, dict[str, dict[str, Any]]] = defaultdict(dict)
    for row in rows:
        by_input[(row["audience"], row["events_per_second"], row["symbols"])][row["design"]] = row

    def seconds(row: dict[str, Any] | None) -> str:
        if row is None or row["time_to_last_delivery_p50_s"] is None:
            return "-"
        return f"{row['time_to_last_delivery_p50_s']:g} / {row['time_to_last_delivery_p99_s']:g}"

    def sustained(row: dict[str, Any] | None) -> str:
        return "-" if row is None else f"{row['sustained_events_per_second']:g}"

    lines = [
        "| audience | events/s | symbols | last delivery p50 / p99 s: before | shipped "
        "| sustained events/s: before / shipped | peak Lambda concurrency | $ per million deliveries "
        "| saturates first (last three: shipped) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for (audience, rate, symbols), designs in sorted(by_input.items()):
        before, shipped = designs.get("source_group"), designs.get(SHIPPED)
        shown = shipped or before
        assert shown is not None
        concurrency = sum(shown["peak_lambda_concurrency"].values())
        lines.append(
            f"| {audience:,} | {rate:g} | {symbols} | {seconds(before)} | {seconds(shipped)} "
            f"| {sustained(before)} / {sustained(shipped)} | {concurrency} "
            f"| {shown['cost_per_million_deliveries']} | {shown['saturates_first']} |"
        )
    return "\n".join(lines)
