"""A Python callable run as a function's handler in threads of this process (the tests' doubles only).

The same timeout accounting as an execution environment, except that a thread
cannot be killed: an overrun handler runs on, and its outcome is discarded.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from local.lambda_runtime.errors import LambdaTimeoutError
from local.lambda_worker import LambdaContext

Handler = Callable[[Any, Any], Any]
# Builds the context of one invocation from its log stream's name, when the handler starts.
ContextFactory = Callable[[str], LambdaContext]


class InProcessHandler:
    """The callable, and the threads that run it: at most `concurrency` invocations at once."""

    def __init__(self, handler: Handler, name: str, concurrency: int, version: str) -> None:
        self.handler = handler
        self.name = name
        self.concurrency = concurrency
        self.version = version
        self.log_streams = threading.local()
        self.pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix=f"lambda-{name}")

    def restart(self) -> ThreadPoolExecutor:
        stopped, self.pool = self.pool, ThreadPoolExecutor(self.concurrency, thread_name_prefix=f"lambda-{self.name}")
        return stopped

    async def invoke(self, event: Any, timeout_seconds: float, context_for: ContextFactory) -> Any:
        """What the handler returns; `LambdaTimeoutError` once it has run `timeout_seconds` (queueing not counted)."""
        started = _Started()
        future = asyncio.get_running_loop().run_in_executor(
            self.pool, self._run_in_thread, event, timeout_seconds, context_for, started
        )
        wait = timeout_seconds
        while True:
            done, _ = await asyncio.wait((future,), timeout=wait)
            if done:
                break
            if started.at is None:
                continue
            wait = started.at + timeout_seconds - time.monotonic()
            if wait <= 0:
                # A thread cannot be killed: it runs on, and whatever it ends with is discarded.
                future.add_done_callback(_discard_outcome)
                raise LambdaTimeoutError(self.name, timeout_seconds)
        return future.result()

    def _run_in_thread(self, event: Any, timeout_seconds: float, context_for: ContextFactory, started: _Started) -> Any:
        started.at = time.monotonic()
        streams = self.log_streams
        if getattr(streams, "name", None) is None:
            streams.name = f"{time.strftime('%Y/%m/%d', time.gmtime())}/[{self.version}]{uuid.uuid4().hex}"
        result = self.handler(event, context_for(streams.name))
        if time.monotonic() - started.at > timeout_seconds:
            raise LambdaTimeoutError(self.name, timeout_seconds)
        return result


class _Started:
    __slots__ = ("at",)

    def __init__(self) -> None:
        self.at: float | None = None


def _discard_outcome(future: asyncio.Future[Any]) -> None:
    # Whatever an overrun handler ends with has no one waiting for it; retrieving it keeps asyncio quiet.
    if not future.cancelled():
        future.exception()
