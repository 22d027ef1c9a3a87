"""`python -m bench.endurance`: see the package's description."""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import machine
from bench.endurance import RESULTS_KEY
from bench.endurance import __doc__ as DESCRIPTION
from bench.endurance.dev_stack import ROOT, DevStack
from bench.endurance.phases import run_async
from bench.measurement import raise_fd_limit

RESULTS = ROOT / "bench" / "results.json"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.endurance", description=(DESCRIPTION or "").split("\n")[0])
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--clients", type=int, nargs="*", default=[1000, 5000])
    parser.add_argument("--events", type=int, default=20, help="events per capacity step")
    parser.add_argument("--dev-args", default="", help="extra arguments for `python -m local dev`")
    parser.add_argument("--sample-interval", type=float, default=10.0)
    parser.add_argument("--ready-interval", type=float, default=5.0)
    parser.add_argument("--probe-interval", type=float, default=30.0)
    parser.add_argument("--output", type=Path, default=RESULTS, help="merged under the key --key")
    parser.add_argument("--key", default=RESULTS_KEY, help=f"starting with {RESULTS_KEY!r} (%(default)s)")
    args = parser.parse_args(argv)
    if not args.key.startswith(RESULTS_KEY):
        # `python -m bench` keeps this benchmark's figures by that prefix when it rewrites the file.
        parser.error(f"--key must start with {RESULTS_KEY!r}: {args.key!r}")
    raise_fd_limit()
    figures: dict[str, Any] = {"command": "python -m bench.endurance " + " ".join(argv or sys.argv[1:])}
    figures["machine"] = machine.describe()
    log_path = ROOT / ".build" / f"bench-{args.key}-dev.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    stack = DevStack(shlex.split(args.dev_args), log_path)
    try:
        figures["start_seconds"] = round(stack.wait_ready(), 1)
        print(f"make dev ready in {figures['start_seconds']} s (pid {stack.process.pid})", flush=True)
        asyncio.run(run_async(args, stack, figures))
    finally:
        stack.kill()
    figures["machine"] = machine.at_end(figures["machine"])
    machine.merge_results(args.output, {args.key: figures})
    print(json.dumps({k: v for k, v in figures.items() if not k.endswith(("samples", "per_minute"))}, indent=2))
    return figures


if __name__ == "__main__":
    main()
