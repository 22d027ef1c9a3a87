"""One execution environment: a `local/lambda_worker.py` interpreter, the frames it speaks, its log stream.

The protocol: each request and each answer is a JSON document behind a length
header (`local.lambda_worker.HEADER`). The first answer, read without a
request, says whether the handler imported (the init phase).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from local.lambda_worker import HEADER

function_logger = logging.getLogger("quanttrade.local.lambda.log")  # the functions' own log streams

WORKER_SCRIPT = Path(__file__).resolve().parent.parent / "lambda_worker.py"
STREAM_LIMIT = 1 << 20  # what one read of an environment's pipes may hold: an answer, or a log line before it is split

_LOG_LEVELS = {
    "TRACE": logging.DEBUG,
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "WARN": logging.WARNING,
    "WARNING": logging.WARNING,
    "ERROR": logging.ERROR,
    "CRITICAL": logging.CRITICAL,
    "FATAL": logging.CRITICAL,
}


class EnvironmentProcess(Protocol):
    """What a worker uses of its process: asyncio's subprocess, or a child forked by a template."""

    pid: int
    stdin: asyncio.StreamWriter | None
    stdout: asyncio.StreamReader | None
    stderr: asyncio.StreamReader | None

    @property
    def returncode(self) -> int | None: ...

    def kill(self) -> None: ...

    async def wait(self) -> int: ...


class WorkerExited(Exception):
    """The environment's process went away before it answered."""


class Worker:
    """One execution environment: an interpreter, its request/response pipes, its log forwarder."""

    __slots__ = ("finished", "process", "retired", "stop_reason")

    def __init__(self, process: EnvironmentProcess, function_name: str) -> None:
        self.process = process
        self.stop_reason: str | None = None  # why the parent killed it: "timeout", "shutdown", ...
        self.retired = False  # the configuration changed: not to be reused after the invocation in hand
        assert process.stderr is not None
        # Done once the process has exited and its last log line is forwarded.
        self.finished = asyncio.ensure_future(self._finish(forward_log(process.stderr, function_name)))

    async def _finish(self, forward_log: Coroutine[Any, Any, None]) -> None:
        await forward_log
        await self.process.wait()

    async def exchange(self, frame: bytes | None) -> dict[str, Any]:
        """Send a request frame (None: just read, for the init answer) and read the answer."""
        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None and stdout is not None
        try:
            if frame is not None:
                stdin.write(frame)
                await stdin.drain()
            header = await stdout.readexactly(HEADER.size)
            (length,) = HEADER.unpack(header)
            body = await stdout.readexactly(length)
        except (asyncio.IncompleteReadError, ConnectionError, BrokenPipeError) as error:
            raise WorkerExited() from error
        answer: dict[str, Any] = json.loads(body)
        return answer

    def kill(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()

    def kill_from_any_thread(self) -> None:
        """SIGKILL without touching the event loop's state (asyncio's Process.kill may reap, so not that)."""
        if self.process.returncode is not None:
            return
        if isinstance(self.process, asyncio.subprocess.Process):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGKILL)
        else:
            self.process.kill()

    async def exit_status(self) -> int:
        with contextlib.suppress(TimeoutError):
            return await asyncio.wait_for(self.process.wait(), timeout=5)
        return -1


async def start_worker(
    function_name: str,
    function_arn: str,
    path: Sequence[str],
    env: Mapping[str, str],
    cwd: Path,
    code_dirs: Sequence[str],
) -> Worker:
    """Start an interpreter that imports only from `path` and sees only `env`; its init answer is still to read."""
    config = {"path": list(path), "code_dirs": list(code_dirs), "function_arn": function_arn}
    process = await spawn_interpreter(config, env, cwd, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    return Worker(process, function_name)


async def spawn_interpreter(
    config: Mapping[str, Any], env: Mapping[str, str], cwd: Path, *, stdin: Any, stdout: Any
) -> asyncio.subprocess.Process:
    """`local/lambda_worker.py` in an isolated interpreter that sees only `env` (whose names it is also told):
    how an environment starts, and a template (`local.lambda_runtime.template`) exactly alike."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-I",
        "-S",
        str(WORKER_SCRIPT),
        json.dumps({**config, "environment": sorted(env)}),
        stdin=stdin,
        stdout=stdout,
        stderr=asyncio.subprocess.PIPE,
        env=dict(env),
        cwd=cwd,
        # Its own session: a Ctrl-C meant for the stack must not interrupt handlers mid-invocation.
        start_new_session=True,
        limit=STREAM_LIMIT,
    )


def request_frame(request_id: str, deadline_ms: int, trace_id: str, payload: str) -> bytes:
    """One invocation as the worker reads it; `payload` is the event, already JSON."""
    header = json.dumps({"id": request_id, "deadline_ms": deadline_ms, "trace_id": trace_id})
    body = f'{header[:-1]},"event":{payload}}}'.encode()
    return HEADER.pack(len(body)) + body


def exit_description(status: int) -> str:
    # Lambda's wording: "exit status 1", or the signal that ended the runtime.
    if status < 0:
        with contextlib.suppress(ValueError):
            return f"signal: {signal.Signals(-status).name}"
    return f"exit status {status}"


async def forward_log(stream: asyncio.StreamReader, function_name: str) -> None:
    """Each line the environment writes becomes a log record named after the function (what CloudWatch shows)."""
    while True:
        try:
            line = await stream.readuntil(b"\n")
        except asyncio.IncompleteReadError as error:  # the process ended: its last line has no newline
            line = error.partial
        except asyncio.LimitOverrunError as error:  # a line longer than the reader's limit: forward it in pieces
            line = await stream.readexactly(error.consumed)
        except Exception:  # the pipe went away with the process
            return
        if not line:
            return
        text = line.decode(errors="replace").rstrip("\n")
        if not text:
            continue
        function_logger.log(_level_of(text), "[%s] %s", function_name, text)


def _level_of(line: str) -> int:
    # Powertools writes one JSON document per record; its "level" decides how loudly to repeat it here.
    if line.startswith("{"):
        try:
            level = json.loads(line).get("level")
        except (ValueError, AttributeError):
            return logging.INFO
        return _LOG_LEVELS.get(str(level).upper(), logging.INFO)
    if line.startswith("[ERROR]") or line.startswith("Traceback"):
        return logging.ERROR
    return logging.INFO
