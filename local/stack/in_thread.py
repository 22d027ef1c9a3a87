"""`BackgroundStack`: a LocalStack on its own event loop in a thread, for synchronous callers and fixtures."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Any

from local.stack.config import StackConfig
from local.stack.local_stack import LocalStack


class BackgroundStack:
    """A LocalStack running on its own event loop in a thread, for synchronous callers and test fixtures.

    Tests drive clients on their own loops; the stack keeps serving while a
    test blocks, and nothing of the stack's loop leaks into theirs.
    """

    def __init__(self, config: StackConfig | None = None) -> None:
        self.stack = LocalStack(config)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="local-stack", daemon=True)

    def start(self, timeout: float = 60.0) -> LocalStack:
        self._thread.start()
        self.run(self.stack.start(), timeout)
        return self.stack

    def run(self, coroutine: Awaitable[Any], timeout: float | None = None) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)  # type: ignore[arg-type]
        return future.result(timeout)

    def call(self, function: Callable[[], Any]) -> Any:
        """Run a plain callable on the stack's loop (e.g. to read gateway state safely)."""

        async def call() -> Any:
            return function()

        return self.run(call(), timeout=10)

    def stop(self, timeout: float = 60.0) -> None:
        if not self._thread.is_alive():
            return
        try:
            self.run(self.stack.stop(), timeout)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            if not self._loop.is_running():
                self._loop.close()

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
