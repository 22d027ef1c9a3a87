"""What a set of figures was measured on: CPU, cores, memory, Python, platform, date, git commit.

Benchmark figures mean little without the machine beside them (this project's
numbers come from a 2-core development box), so every results file carries
this section. Linux's /proc is read directly; elsewhere the fields it would
fill stay None instead of failing the run.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
REFERENCE_ROUND_TRIPS = 5_000  # about 40 ms of CPU on the 2-core development machine


def cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def memory_bytes() -> int | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def git_commit() -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip()

    status = git("status", "--porcelain", "--untracked-files=no")
    # Other work in the tree changes what was measured: say so rather than pretend the commit is the whole story.
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(status) if status is not None else None}


def describe() -> dict[str, Any]:
    memory = memory_bytes()
    return {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": round(memory / 2**30, 1) if memory else None,
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        # Other work on a 2-core machine moves every figure: say how busy it was when they were taken.
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        # A shared virtual machine is itself faster or slower from one hour to the next (the same work has
        # cost 36 to 73 ms minutes apart): say how fast it was, so runs on different days can be compared.
        "reference_work_ms": _reference_work_median_ms(),
        **{f"git_{key}": value for key, value in git_commit().items()},
    }


def at_end(described: dict[str, Any]) -> dict[str, Any]:
    """A machine section taken before a run, with the load average and the reference work's cost as the run ends."""
    return {
        **described,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "reference_work_ms_at_end": _reference_work_median_ms(),
    }


def _reference_work_median_ms(times: int = 5) -> float:
    return round(statistics.median(reference_work_ms() for _ in range(times)), 1)


def merge_results(path: Path, updates: dict[str, Any], *, dropping_prefix: str | None = None) -> None:
    """Write `updates` into a results file, leaving every other benchmark's keys as they are
    (and, with `dropping_prefix`, removing this benchmark's keys that the run did not produce again)."""
    results = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    if dropping_prefix is not None:
        results = {key: value for key, value in results.items() if not key.startswith(dropping_prefix)}
    results.update(updates)
    path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


def reference_work_ms() -> float:
    """CPU milliseconds this process spends on a fixed piece of pure-Python work (JSON round trips, the
    interpreter's everyday diet). On a shared virtual machine the same work costs more or less from one
    minute to the next; a long run that takes this beside its own CPU figures can tell a slower machine
    from a stack that does more."""
    document = {"stream": "market_data:AAPL", "seq": 12345, "payload": {"price": 187.25, "volume": 300, "tags": ["a"]}}
    started = time.process_time()
    for _ in range(REFERENCE_ROUND_TRIPS):
        json.loads(json.dumps(document))
    return (time.process_time() - started) * 1000


def rss_bytes(pid: int) -> int | None:
    """Resident set size of a process, from /proc (None when it is gone or /proc is absent)."""
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def pss_bytes(pid: int) -> int | None:
    """Proportional set size of a process: its private pages and its share of pages it shares with others
    (a forked execution environment and its template). Summed over processes it is the memory they use
    together, where summed resident sizes count every shared page once per process."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="utf-8") as rollup:
            for line in rollup:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def child_pids(pid: int) -> list[int]:
    """Direct children of a process (Linux), e.g. the moto server the local stack started."""
    children: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children", encoding="utf-8") as listing:
                children.extend(int(child) for child in listing.read().split())
    except (OSError, ValueError):
        pass
    return children


def cpu_seconds(pid: int, *, exited_children: bool = False) -> float | None:
    """User plus system CPU time a process has used so far (Linux); with `exited_children`, also that of its
    children that have exited and been waited for, so a process tree's sum does not drop when one ends
    (an idle execution environment that the local stack shut down, say)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        ticks = int(fields[11]) + int(fields[12])
        if exited_children:
            ticks += int(fields[13]) + int(fields[14])
        return ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


if __name__ == "__main__":
    for key, value in describe().items():
        print(f"{key:24} {value}")
