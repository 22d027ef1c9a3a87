"""`make dev` as the endurance benchmark runs and watches it: the process group, its processes' memory and
CPU, `/ready`, `/local/stats`, and the outputs file that names its endpoints."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import machine

ROOT = Path(__file__).resolve().parent.parent.parent
OUTPUTS_FILE = ROOT / ".build" / "local" / "outputs.json"
HTTP = "http://127.0.0.1:8081"
WS = "ws://127.0.0.1:8081"
START_DEADLINE = 300.0
STOP_DEADLINE = 60.0


WORKERS = "lambda workers"  # the kind of every function template and execution environment process


def process_tree(root: int) -> list[int]:
    """The root and every descendant."""
    found, pending = [], [root]
    while pending:
        pid = pending.pop()
        found.append(pid)
        pending.extend(machine.child_pids(pid))
    return found


def _command(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            parts = cmdline.read().split(b"\0")
    except OSError:
        return "?"
    text = " ".join(part.decode(errors="replace") for part in parts if part)
    if "local.moto_server" in text:
        return "moto"
    if "lambda_worker" in text:
        return WORKERS
    # `bench.stack_server` runs the same stack (gateway, pumps, front door) in a benchmark's child process.
    return "dev process" if "local dev" in text or "-m local" in text or "bench.stack_server" in text else text[:40]


def tree_usage(root: int) -> dict[str, Any]:
    """Resident memory (MiB; RSS, and PSS, which counts shared pages once) and CPU seconds of the stack's
    processes, by kind and in total (CPU of processes that have ended stays with their parent's kind)."""
    by_kind: dict[str, dict[str, float]] = {}
    for pid in process_tree(root):
        rss, pss, cpu = machine.rss_bytes(pid), machine.pss_bytes(pid), machine.cpu_seconds(pid, exited_children=True)
        if rss is None or cpu is None:
            continue
        kind = by_kind.setdefault(_command(pid), {"rss_mib": 0.0, "pss_mib": 0.0, "cpu_seconds": 0.0, "processes": 0})
        kind["rss_mib"] += rss / 2**20
        kind["pss_mib"] += (pss or 0) / 2**20
        kind["cpu_seconds"] += cpu
        kind["processes"] += 1
    return {
        "rss_mib": round(sum(kind["rss_mib"] for kind in by_kind.values()), 1),
        "pss_mib": round(sum(kind["pss_mib"] for kind in by_kind.values()), 1),
        "cpu_seconds": round(sum(kind["cpu_seconds"] for kind in by_kind.values()), 2),  # the kernel counts 10 ms ticks
        "by_kind": {name: {k: round(v, 2) for k, v in kind.items()} for name, kind in by_kind.items()},
    }


class DevStack:
    """`python -m local dev` as a user starts it, in its own process group."""

    def __init__(self, dev_args: Sequence[str], log_path: Path) -> None:
        self.log_path = log_path
        self.log = open(log_path, "w")  # noqa: SIM115 - lives as long as the process
        self.process = subprocess.Popen(
            [sys.executable, "-m", "local", "dev", *dev_args],
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, deadline: float = START_DEADLINE) -> float:
        began = time.monotonic()
        while time.monotonic() - began < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"make dev exited with {self.process.returncode}:\n{self.log_tail()}")
            if ready_status()[0] == 200:
                return time.monotonic() - began
            time.sleep(0.5)
        raise RuntimeError(f"not ready within {deadline:.0f} s:\n{self.log_tail()}")

    def interrupt(self) -> float | None:
        """Ctrl-C: SIGINT to the dev process; seconds until the whole process group is gone."""
        began = time.monotonic()
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(STOP_DEADLINE)
        except subprocess.TimeoutExpired:
            return None
        while time.monotonic() - began < STOP_DEADLINE:
            try:
                os.killpg(self.process.pid, 0)
            except ProcessLookupError:
                return time.monotonic() - began
            time.sleep(0.05)
        return None

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.log.close()

    def log_tail(self, characters: int = 3000) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-characters:]


def ready_status(timeout: float = 2.0) -> tuple[int, float]:
    """(HTTP status or 0 for no answer, seconds taken)."""
    began = time.monotonic()
    try:
        with urllib.request.urlopen(f"{HTTP}/ready", timeout=timeout) as response:
            return response.status, time.monotonic() - began
    except urllib.error.HTTPError as error:
        return error.code, time.monotonic() - began
    except OSError:
        return 0, time.monotonic() - began


# ------------------------------------------------------------------ clients


def stack_outputs() -> dict[str, str]:
    """What the running `make dev` announces in its outputs file (as `cdk deploy --outputs-file`)."""
    return dict(next(iter(json.loads(OUTPUTS_FILE.read_text()).values())))


def stack_client(service: str, outputs: dict[str, str]) -> Any:
    """A boto3 client of the running stack's AWS endpoint, as the local administrator."""
    import boto3

    from local.moto_server import CREDENTIALS

    make_client: Any = boto3.client
    return make_client(service, region_name="us-east-1", endpoint_url=outputs["LocalAwsEndpoint"], **CREDENTIALS)


def local_stats() -> dict[str, Any]:
    """The running stack's `/local/stats`, signed as the local administrator (as `python -m local stats`)."""
    from local.signed_http import signed_request

    with urllib.request.urlopen(signed_request("GET", f"{HTTP}/local/stats", region="us-east-1"), timeout=30) as answer:
        return dict(json.loads(answer.read()))


def stats_between(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Cold starts by function and AWS calls by operation (all principals) between two `/local/stats`."""

    def calls(stats: dict[str, Any]) -> dict[str, int]:
        totals: dict[str, int] = {}
        for by_operation in stats["aws_calls"].values():
            for operation, count in by_operation.items():
                totals[operation] = totals.get(operation, 0) + count
        return totals

    def short(name: str) -> str:  # QuantTrade-prod-FunctionsConnectFunctionAA697F77-... -> Connect
        return name.split("Functions", 1)[-1].split("Function", 1)[0] or name

    cold = {
        short(name): usage.get("cold_starts", 0) - before["functions"].get(name, {}).get("cold_starts", 0)
        for name, usage in after["functions"].items()
    }
    was, now = calls(before), calls(after)
    return {
        "cold_starts": {name: count for name, count in cold.items() if count},
        "aws_calls": {op: now[op] - was.get(op, 0) for op in sorted(now) if now[op] - was.get(op, 0)},
    }


def cpu_by_kind(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    """CPU seconds each kind of process spent between two `tree_usage` readings (an ended process counts with
    its parent), to a tenth."""
    return {kind: round(seconds, 1) for kind, seconds in cpu_seconds_between(before, after).items()}


def cpu_seconds_between(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    """`cpu_by_kind`, unrounded."""
    return {
        kind: usage["cpu_seconds"] - before["by_kind"].get(kind, {}).get("cpu_seconds", 0.0)
        for kind, usage in after["by_kind"].items()
    }
