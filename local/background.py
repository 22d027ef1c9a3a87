"""A loop the local stack runs beside its servers (an SQS pump, the market simulator).

One named asyncio task that repeats until it is asked to stop; starting a loop
that runs does nothing. Each loop says how it stops: a pump finishes the batch
in hand, the simulator leaves a stuck PutEvents behind.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod


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
