"""Per-invocation overhead of the local Lambda runtime (`local.lambda_runtime`): a trivial handler, warm.

    python -m bench.lambda_runtime

Figures: invocations per second through worker processes with concurrency 1
(one environment, invocations back to back) and 8 (eight environments, 64
callers), the cold start of one environment (interpreter + handler import),
and the in-process mode for comparison. Every invocation carries a small
API Gateway-sized event and returns it, so both JSON legs are paid.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from local.deps_layer import runtime_provided
from local.lambda_runtime.function import LambdaFunction

INVOCATIONS = 4000
CALLERS = 64
COLD_STARTS = 5
HANDLER = "def handler(event, context):\n    return event\n"
EVENT: dict[str, Any] = {
    "requestContext": {"routeKey": "ping", "connectionId": "L0SM9cOFvHcCIhw=", "requestId": "x" * 16},
    "body": '{"action":"ping","request_id":"r-1"}',
    "isBase64Encoded": False,
}


async def _rate(function: LambdaFunction, callers: int) -> float:
    await function.invoke(EVENT)  # warm
    remaining = INVOCATIONS

    async def caller() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await function.invoke(EVENT)

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    return INVOCATIONS / (time.perf_counter() - started)


async def _measure(code: Path) -> dict[str, float]:
    runtime_dir = runtime_provided()
    figures: dict[str, float] = {}
    for concurrency, callers in ((1, 1), (8, CALLERS)):
        function = LambdaFunction(
            "bench", "app.handler", code_dirs=[code], runtime_dir=runtime_dir, concurrency=concurrency
        )
        await function.init()
        figures[f"lambda_runtime_c{concurrency}_invocations_per_second"] = round(await _rate(function, callers))
        await function.aclose()
    samples = []
    for _ in range(COLD_STARTS):
        function = LambdaFunction("bench", "app.handler", code_dirs=[code], runtime_dir=runtime_dir)
        started = time.perf_counter()
        await function.init()
        samples.append((time.perf_counter() - started) * 1000)
        await function.aclose()
    figures["lambda_runtime_cold_start_ms"] = round(statistics.median(samples), 1)
    in_process = LambdaFunction("bench", lambda event, context: event, concurrency=8)
    figures["lambda_runtime_in_process_c8_invocations_per_second"] = round(await _rate(in_process, CALLERS))
    in_process.shutdown()
    return figures


def run() -> dict[str, float]:
    with tempfile.TemporaryDirectory() as directory:
        code = Path(directory)
        (code / "app.py").write_text(HANDLER)
        return asyncio.run(_measure(code))


if __name__ == "__main__":
    for key, value in run().items():
        print(f"{key:55} {value:10.1f}")
