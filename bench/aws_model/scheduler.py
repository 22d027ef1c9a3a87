"""Simulated time: a heap of callbacks, and processes (threads) of which exactly one runs at a time."""

from __future__ import annotations

import heapq
import math
import random
import threading
from collections.abc import Callable


class Sim:
    """Simulated time: a heap of callbacks, and processes (threads) of which exactly one runs at a time."""

    def __init__(self, seed: int = 1) -> None:
        self.now = 0.0
        self.rng = random.Random(seed)
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._order = 0
        self._baton = threading.Semaphore(0)
        self._current: _Process | None = None
        self.error: BaseException | None = None

    def at(self, when: float, callback: Callable[[], None]) -> None:
        heapq.heappush(self._heap, (max(when, self.now), self._order, callback))
        self._order += 1

    def spawn(self, body: Callable[[], object], when: float | None = None) -> None:
        process = _Process(self, body)
        self.at(self.now if when is None else when, process.resume)

    def sleep(self, seconds: float) -> None:
        """Block the calling process for `seconds` of simulated time."""
        process = self._current
        if process is None:
            raise RuntimeError("Sim.sleep outside a simulated process")
        self.at(self.now + max(0.0, seconds), process.resume)
        process.suspend()

    def run(self, until: float = math.inf) -> None:
        while self._heap and self._heap[0][0] <= until:
            when, _, callback = heapq.heappop(self._heap)
            self.now = when
            callback()
            if self.error is not None:
                raise RuntimeError("a simulated process failed") from self.error


class _Process:
    def __init__(self, sim: Sim, body: Callable[[], object]) -> None:
        self.sim = sim
        self.body = body
        self.go = threading.Semaphore(0)
        self.started = False

    def resume(self) -> None:
        self.sim._current = self
        if not self.started:
            self.started = True
            threading.Thread(target=self._main, daemon=True).start()
        else:
            self.go.release()
        self.sim._baton.acquire()  # until the process blocks again or ends
        self.sim._current = None

    def suspend(self) -> None:
        self.sim._baton.release()
        self.go.acquire()

    def _main(self) -> None:
        try:
            self.body()
        except BaseException as error:  # handed to the scheduler, which raises it
            self.sim.error = error
        finally:
            self.sim._baton.release()
