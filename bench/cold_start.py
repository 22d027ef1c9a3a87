"""Cold start: import time of each handler module in a fresh interpreter, beside a bare `import boto3`.

Each figure is the median of several fresh interpreters, so a busy core on this
2-core machine does not decide the result. Handlers import boto3 lazily (on
first use), so the handler figure is what the module adds before its first call.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
from pathlib import Path

from quanttrade_ws import topology

ROOT = Path(__file__).resolve().parent.parent
RUNS = 7
PROBE = """
import os, sys, time
os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
sys.path[:0] = [{root!r}, {layer!r}]
start = time.perf_counter()
import {module}
print((time.perf_counter() - start) * 1000)
"""


def import_ms(module: str) -> float:
    code = PROBE.format(root=str(ROOT), layer=str(ROOT / "layers/shared/python"), module=module)
    samples = []
    for _ in range(RUNS):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
        samples.append(float(out.stdout.strip()))
    return statistics.median(samples)


def run() -> dict[str, float]:
    figures = {"cold_start_import_boto3_ms": round(import_ms("boto3"), 1)}
    for function in topology.FUNCTIONS:
        module = "handlers." + function.handler.rsplit(".", 1)[0]
        figures[f"cold_start_import_{function.name}_ms"] = round(import_ms(module), 1)
    handler_figures = [v for k, v in figures.items() if k != "cold_start_import_boto3_ms"]
    figures["cold_start_worst_handler_minus_boto3_ms"] = round(
        max(handler_figures) - figures["cold_start_import_boto3_ms"], 1
    )
    return figures


if __name__ == "__main__":
    for key, value in run().items():
        print(f"{key:50} {value:8.1f}")
