"""What one cold start of a real function costs the machine, and what N warm environments of it hold in memory.

    python -m bench.lambda_cold_start [--function connect.handler] [--event connect] [--runs 5] [--environments 8]

The local stack runs as `make dev` does (minus the simulator, sweeper and smoke
invocations); the figures are for one of the template's functions (by handler,
`connect.handler` by default) invoked with a sample event of events/apigateway/:

* a cold start, `--runs` times in a row, each after killing the function's
  environments: wall time of the init phase, then of the first invocation (the
  boto3 clients are made there), and the CPU seconds the environment's process
  used for both (from /proc, so the stack's own CPU is not counted);
* `--environments` invocations at once (as many cold starts), then the resident
  and proportional set sizes of those processes: RSS counts pages shared with
  another process once per process, PSS divides them among their sharers, so the
  sum of PSS is what the environments really take from the machine.

The template the environments are forked from (see `local.lambda_runtime.template`)
is reported apart, with the CPU it used since the stack started.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import time
from pathlib import Path
from typing import Any

from bench import machine
from local.cloud.synth import synthesize
from local.lambda_runtime.function import LambdaFunction
from local.stack.config import StackConfig
from local.stack.in_thread import BackgroundStack

ROOT = Path(__file__).resolve().parent.parent
SECRET = "bench-secret-of-at-least-thirty-two-bytes"


def sample_event(name: str, number: int) -> dict[str, Any]:
    event: dict[str, Any] = json.loads((ROOT / "events" / "apigateway" / f"{name}.json").read_text())
    event["requestContext"]["connectionId"] = f"bench{number:04d}="
    return event


def wait_until(condition: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.01)


def kill_environments(background: BackgroundStack, function: LambdaFunction) -> None:
    for pid in function.environment_pids:
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not background.call(lambda: function.environment_pids), "the environments to be gone")


def measure(function_handler: str, event_name: str, runs: int, environments: int) -> dict[str, Any]:
    background = BackgroundStack(
        StackConfig(
            assembly=synthesize(),
            gateway_port=0,
            moto_port=0,
            jwt_secret=SECRET,
            sweep_interval=None,
            simulator=False,
            connect_rate_per_second=None,
            dashboard=False,
            smoke=False,
        )
    )
    stack = background.start(timeout=300)
    try:
        function = next(f for f in stack.functions.values() if f.handler_spec == function_handler)
        init_s, first_s, cpu_s = [], [], []
        for run in range(runs):
            kill_environments(background, function)
            began = time.perf_counter()
            background.run(function.init())
            initialised = time.perf_counter()
            background.run(function.invoke(sample_event(event_name, run)))
            done = time.perf_counter()
            (pid,) = background.call(lambda: function.environment_pids)
            init_s.append(initialised - began)
            first_s.append(done - initialised)
            cpu_s.append(machine.cpu_seconds(pid) or 0.0)
        kill_environments(background, function)

        async def at_once() -> None:
            await asyncio.gather(*(function.invoke(sample_event(event_name, 100 + n)) for n in range(environments)))

        background.run(at_once())
        pids = background.call(lambda: function.environment_pids)
        templates = background.call(lambda: function.template_pids)
        return {
            "function": function.name,
            "cold_start_init_wall_ms_median": round(statistics.median(init_s) * 1000, 1),
            "cold_start_first_invocation_wall_ms_median": round(statistics.median(first_s) * 1000, 1),
            "cold_start_cpu_s_median": round(statistics.median(cpu_s), 3),
            "cold_start_cpu_s_runs": [round(c, 3) for c in cpu_s],
            "environments": len(pids),
            "environments_rss_mib_total": _mib(sum(machine.rss_bytes(pid) or 0 for pid in pids)),
            "environments_pss_mib_total": _mib(sum(machine.pss_bytes(pid) or 0 for pid in pids)),
            "templates": {
                str(pid): {
                    "rss_mib": _mib(machine.rss_bytes(pid) or 0),
                    "pss_mib": _mib(machine.pss_bytes(pid) or 0),
                    "cpu_s": machine.cpu_seconds(pid),
                }
                for pid in templates
            },
        }
    finally:
        background.stop()


def _mib(size: int) -> float:
    return round(size / 2**20, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--function", default="connect.handler", help="the handler of the template's function")
    parser.add_argument("--event", default="connect", help="the sample event, events/apigateway/<event>.json")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--environments", type=int, default=8)
    args = parser.parse_args()
    for key, value in measure(args.function, args.event, args.runs, args.environments).items():
        print(f"{key:45} {value}")


if __name__ == "__main__":
    main()
