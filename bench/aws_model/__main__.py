"""`python -m bench.aws_model`: the validation, the goals, the design comparison and the grid, written as JSON."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench import aws_model
from bench.aws_model.design_comparison import design_comparison
from bench.aws_model.designs import DESIGNS, SHIPPED, VARIANT
from bench.aws_model.goals import goals
from bench.aws_model.grid import grid, markdown_table
from bench.aws_model.profiles import AWS
from bench.aws_model.validation import validate
from quanttrade_ws.observability import logger as service_logger

ROOT = Path(__file__).resolve().parents[2]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m bench.aws_model", description=(aws_model.__doc__ or "").split("\n")[0]
    )
    parser.add_argument(
        "--designs",
        nargs="+",
        default=["source_group", SHIPPED],
        choices=sorted([*DESIGNS, *(name + VARIANT for name in DESIGNS)]),
    )
    parser.add_argument("--max-deliveries", type=int, default=50_000, help="deliveries simulated per scenario")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds of offered load per scenario")
    parser.add_argument("--output", default=str(ROOT / "bench" / "aws-model-results.json"))
    parser.add_argument("--results", default=str(ROOT / "bench" / "results.json"))
    parser.add_argument("--skip-grid", action="store_true")
    parser.add_argument("--table", action="store_true", help="print the grid of --output as markdown, run nothing")
    args = parser.parse_args(argv)
    if args.table:
        with open(args.output) as handle:
            print(markdown_table(json.load(handle)["grid"]))
        return {}
    started = time.perf_counter()
    # Sequencing contention and failed posts are counted in the figures; their log lines are noise here.
    service_logger.setLevel(logging.CRITICAL)

    def log(line: str) -> None:
        print(line, flush=True)

    figures: dict[str, Any] = {"command": "python -m bench.aws_model " + " ".join(argv or sys.argv[1:])}
    figures["validation_local_end_to_end_1000"] = validation = validate(args.results)
    # The profile the check ran with is written once, as `profile_local`, and kept out of the log line.
    profile_local = validation["calibration"].pop("profile")
    log(f"validation: {json.dumps(figures['validation_local_end_to_end_1000'])}")
    figures["goals"] = goals()
    log(f"goals: {json.dumps(figures['goals'])}")
    figures["design_comparison"] = design_comparison(sorted(DESIGNS))
    log(f"designs: {json.dumps(figures['design_comparison'])}")
    if not args.skip_grid:
        figures["grid"] = grid(args.designs, args.max_deliveries, args.seconds, log)
    figures["profile_aws"] = asdict(AWS)
    figures["profile_local"] = profile_local
    figures["designs"] = {name: asdict(design) for name, design in DESIGNS.items()}
    figures["wall_seconds"] = round(time.perf_counter() - started, 1)
    with open(args.output, "w") as handle:
        json.dump(figures, handle, indent=1)
        handle.write("\n")
    log(f"wrote {args.output} in {figures['wall_seconds']} s")
    return figures


if __name__ == "__main__":
    main()
