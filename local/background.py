"""A loop the local stack runs beside its servers (an SQS pump, the market simulator).

One named asyncio task that repeats until it is asked to stop; starting a loop
that runs does nothing. Each loop says how it stops: a pump finishes the batch
in hand, the simulator leaves a stuck PutEvents behind.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor


class BackgroundLoop(ABC):
    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start the loop on the running event loop, unless it runs already."""
        if self.running:
            return
        self._stopping.clear()
        self._task = asyncio.get_running_loop().create_task(self._run(), name=self.task_name)

    @property
    @abstractmethod
    def task_name(self) -> str:
        """The task's name, as asyncio's debugging and a stack dump show it."""

    @abstractmethod
    async def _run(self) -> None:
        """The loop itself: turns until `_stopping` is set."""


class PollingLoop(BackgroundLoop):
    """A loop whose blocking calls (boto3's, SQS long polls) run on a thread of its own, so a long poll
    never occupies a worker of the event loop's default pool. Stopping finishes the turn in hand (a
    received batch is never abandoned in flight), then releases the thread."""

    def __init__(self) -> None:
        super().__init__()
        self._io: ThreadPoolExecutor | None = None

    def start(self) -> None:
        if not self.running:
            self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self.task_name)
        super().start()

    async def stop(self) -> None:
        self._stopping.set()
        task, self._task = self._task, None
        if task is not None:
            await task
        if self._io is not None:
            self._io.shutdown(wait=False, cancel_futures=True)
            self._io = None
