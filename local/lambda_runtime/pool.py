"""The execution environments of one function on one event loop: the concurrency cap, the warm ones, the live ones."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from local.lambda_runtime.template import Template
from local.lambda_runtime.worker import Worker

# How long an execution environment may stay idle before it is shut down. Lambda does not document its own
# limit; public measurements put it between about 5 and 15 minutes of inactivity. 10 minutes keeps what a
# developer clicking around `make dev` uses warm, as on AWS, while the extra environments a burst started go
# within the quarter hour instead of living as long as the stack (each holds 40 to 57 MiB). 0: never.
DEFAULT_IDLE_LIMIT_SECONDS = 600.0


class WorkerPool:
    """Replaced whole on shutdown, or when the function is driven from another event loop.

    Holds the current configuration's template too (see `local.lambda_runtime.template`):
    started by the first cold start, retired with the configuration.

    An environment left idle for `idle_limit` seconds is shut down, as Lambda shuts down idle execution
    environments (`on_reaped` is told). Each idle one has a timer, armed when it is put back and cancelled when
    it is taken: one callback on the loop, so no task to stop, and nothing busy or being handed to an
    invocation is ever in reach of one. Warm ones are taken most recently used first, so what ages out is what
    a past burst started. The template is kept when every environment has gone: there is one per
    configuration, whatever the bursts, and it is what keeps the next cold start cheap.
    """

    def __init__(self, concurrency: int, idle_limit: float, on_reaped: Callable[[], None] | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        self.slots = asyncio.Semaphore(concurrency)
        self.idle: list[Worker] = []  # most recently used last
        self.idle_limit = idle_limit  # 0: never shut down for idleness
        self.idle_timers: dict[Worker, asyncio.TimerHandle] = {}  # one per idle environment while a limit applies
        self._on_reaped = on_reaped
        self.workers: set[Worker] = set()  # alive and usable (idle or busy)
        self.processes: set[Worker] = set()  # every process not yet exited, usable or not
        self.closed = False
        self.template: Template | None = None  # the current configuration's, once a cold start has needed it
        self.template_lock = asyncio.Lock()  # concurrent cold starts start one template, not one each
        self.templates: set[Template] = set()  # every template process not yet exited, current or retired
        self.fork_refused = False  # the current configuration's template cannot fork cleanly: start fresh
        self.generation = 0  # which configuration is current: a cold start of an older one forks from no template

    def add_template(self, template: Template, generation: int) -> bool:
        """Track a template's process until it exits; the current configuration's template unless the pool closed
        or the configuration changed while it started (then it is closed at once)."""
        self.templates.add(template)
        template.finished.add_done_callback(lambda _: self.templates.discard(template))
        if self.closed or generation != self.generation:
            template.close()
            return False
        self.template = template
        return True

    def add(self, worker: Worker) -> None:
        self.workers.add(worker)
        self.processes.add(worker)
        worker.finished.add_done_callback(lambda _: self.processes.discard(worker))

    def put_idle(self, worker: Worker) -> None:
        """Back among the warm environments after an invocation or its init phase; shut down if none takes it
        within the idle limit."""
        self.idle.append(worker)
        if self.idle_limit > 0 and not self.closed:
            self.idle_timers[worker] = self.loop.call_later(self.idle_limit, self._reap, worker)

    def take_warm(self) -> Worker | None:
        """An idle environment still alive, or None: the caller then starts one cold."""
        while self.idle:
            worker = self.idle.pop()
            timer = self.idle_timers.pop(worker, None)
            if timer is not None:
                timer.cancel()
            if worker.process.returncode is None:
                return worker
            # Died while idle (killed from outside, out of memory): Lambda would just start another.
            self.workers.discard(worker)
        return None

    def _reap(self, worker: Worker) -> None:
        self.idle_timers.pop(worker, None)
        if worker not in self.idle:  # taken, retired or closed meanwhile: each of those cancels the timer first
            return
        self.idle.remove(worker)
        self.workers.discard(worker)
        if worker.process.returncode is not None:  # died while idle: nothing left to shut down
            return
        worker.kill("idle")
        if self._on_reaped is not None:
            self._on_reaped()

    def _disarm_idle_timers(self) -> None:
        for timer in self.idle_timers.values():
            timer.cancel()
        self.idle_timers.clear()

    def retire_all(self) -> None:
        """The configuration changed: idle environments go now, busy ones when their invocation ends."""
        if self.closed:
            return
        self._disarm_idle_timers()
        for worker in self.idle:
            self.workers.discard(worker)
            worker.kill("reconfigured")
        self.idle.clear()
        for worker in self.workers:
            worker.retired = True
        # The template's imports ran with the old environment: the new configuration gets its own.
        if self.template is not None:
            self.template.retire()
            self.template = None
        self.fork_refused = False
        self.generation += 1

    def close(self) -> None:
        self.closed = True
        self._disarm_idle_timers()
        for worker in list(self.workers):
            worker.kill("shutdown")
        self.idle.clear()
        for template in list(self.templates):
            template.close()
        self.template = None
