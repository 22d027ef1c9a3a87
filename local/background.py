"""A loop the local stack runs beside its servers (an SQS pump, the market simulator).

One named asyncio task that repeats until it is asked to stop; starting a loop
that runs does nothing. Each loop says how it stops: a pump finishes the batches
in hand, the simulator leaves a stuck PutEvents behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


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


@dataclass
class Parallelism:
    """How many pollers a pump runs, and how many of them hold a batch (an invocation, a move) at once."""

    pollers: int
    in_flight: int = 0
    peak_in_flight: int = 0

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """While one poller works on a batch (on the event loop's thread: no lock needed)."""
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            yield
        finally:
            self.in_flight -= 1

    def as_dict(self) -> dict[str, int]:
        return {"pollers": self.pollers, "in_flight": self.in_flight, "peak_in_flight": self.peak_in_flight}


class PollingLoop(BackgroundLoop):
    """`pollers` concurrent copies of `_poll`, as the Lambda and Pipes pollers of one SQS source run.

    Each poller has an SQS client of its own, and the loop has one private thread per
    poller for the blocking calls (boto3's, SQS long polls): a poller makes one such
    call at a time, and a long poll never occupies a worker of the event loop's
    default pool. Stopping lets every poller finish the batch in hand (a received
    batch is never abandoned in flight), then releases the threads. A poller that
    raises something unexpected stops the others and the loop, loudly, at `stop()`.
    """

    def __init__(self, client_factory: Callable[[], Any], *, pollers: int = 1) -> None:
        if pollers < 1:
            raise ValueError(f"a polling loop needs at least one poller, not {pollers}")
        super().__init__()
        self.parallelism = Parallelism(pollers)
        self._client_factory = client_factory
        self._clients: dict[int, Any] = {}
        self._io: ThreadPoolExecutor | None = None

    @property
    def pollers(self) -> int:
        return self.parallelism.pollers

    def start(self) -> None:
        if not self.running:
            self._io = ThreadPoolExecutor(max_workers=self.pollers, thread_name_prefix=self.task_name)
        super().start()

    async def stop(self) -> None:
        self._stopping.set()
        task, self._task = self._task, None
        if task is not None:
            await task
        if self._io is not None:
            self._io.shutdown(wait=False, cancel_futures=True)
            self._io = None

    async def _run(self) -> None:
        async with asyncio.TaskGroup() as pollers:
            for poller in range(self.pollers):
                pollers.create_task(self._poll(poller), name=f"{self.task_name}-poller-{poller}")

    @abstractmethod
    async def _poll(self, poller: int) -> None:
        """One poller: receive, handle, repeat until `_stopping` is set."""

    def client(self, poller: int) -> Any:
        """Poller `poller`'s SQS client, made on first use (a blocking call: run it on the loop's threads)."""
        client = self._clients.get(poller)
        if client is None:
            # boto3's default session may not make clients on several threads at once.
            with _CLIENT_CREATION:
                client = self._clients.setdefault(poller, self._client_factory())
        return client

    async def _blocking(self, call: Callable[..., T], *args: Any) -> T:
        """`call(*args)` on one of the loop's threads."""
        return await asyncio.get_running_loop().run_in_executor(self._io, call, *args)

    async def _pause(self, seconds: float) -> None:
        """Sleep `seconds`, or less if a stop comes meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)


_CLIENT_CREATION = threading.Lock()
