"""A server a benchmark runs in a child process, and the two ends of how they talk.

The child announces where it listens with one JSON line on its stdout, then
runs until its stdin closes: the parent holds that pipe, so no server outlives
a run, even when the parent dies.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Coroutine
from typing import Any

from bench.measurement import raise_fd_limit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(ROOT, "layers", "shared", "python")

STARTUP_TIMEOUT = 90.0


def child_environment() -> dict[str, str]:
    """This process's environment, with the repository and the shared package first on the child's import path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, SHARED, env.get("PYTHONPATH", "")) if p)
    return env


def first_line(process: subprocess.Popen[Any], timeout: float) -> Any:
    """The first line the child writes on its stdout (str or bytes, as its pipe is opened), or None after `timeout`."""
    line: list[Any] = []
    stdout = process.stdout
    assert stdout is not None
    reader = threading.Thread(target=lambda: line.append(stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return line[0] if line else None


def announce(payload: dict[str, Any]) -> None:
    """Tell the parent where we listen, then stop writing to the pipe it no longer reads.

    Powertools prints an EMF document to stdout whenever a metric collects 100
    values, even with metrics disabled, and the fan-out adds one DeliveryLag
    value per delivered post: a pipe nobody reads fills after a few events and
    the next print blocks the fan-out for good. /dev/null takes it instead.
    """
    sys.stdout.write(json.dumps(payload) + "\n")
    sys.stdout.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


async def until_stdin_closes() -> None:
    # The parent holds our stdin: when it closes it (or dies), we stop, so no server outlives a run.
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


class ChildProcess:
    """A server in a child process, announced by one JSON line on its stdout, stopped by closing its stdin."""

    def __init__(
        self,
        role: str,
        options: dict[str, Any] | None = None,
        startup_timeout: float = STARTUP_TIMEOUT,
        module: str = "bench.stack_server",
    ) -> None:
        """Run `python -m <module> --options <options as JSON>`; `role` names the server in errors and its log."""
        env = child_environment()
        # A file, not a pipe: nobody reads stderr while the run lasts, and a full pipe would stall the child.
        self.log = tempfile.TemporaryFile(mode="w+", prefix=f"bench-{role}-", suffix=".log")  # noqa: SIM115
        command = [sys.executable, "-m", module, "--options", json.dumps(options or {})]
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, cwd=ROOT, env=env, text=True
        )
        line = first_line(self.process, startup_timeout)
        if not line or not line.strip():
            tail = self.log_tail()
            self.close()
            raise RuntimeError(f"{role} server did not start within {startup_timeout:g}s: {tail}")
        self.info: dict[str, Any] = json.loads(line)
        self.pid: int = int(self.info["pid"])

    def log_tail(self, characters: int = 2000) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-characters:].strip()

    def close(self, timeout: float = 60.0) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(OSError):
                assert self.process.stdin is not None
                self.process.stdin.close()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.terminate()
                try:
                    self.process.wait(10)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(10)
        self.log.close()

    def __enter__(self) -> ChildProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def run_server(serve: Callable[[dict[str, Any]], Coroutine[Any, Any, None]], prog: str) -> None:
    """A child's entry point: `serve(options)` with the options its parent passed as JSON, until stdin closes."""
    parser = argparse.ArgumentParser(prog=prog, description="a benchmark's server, started by its ChildProcess")
    parser.add_argument("--options", default="{}", help="the server's options as a JSON object")
    args = parser.parse_args()
    raise_fd_limit()
    asyncio.run(serve(json.loads(args.options)))
