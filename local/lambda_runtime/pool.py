"""The execution environments of one function on one event loop: the concurrency cap, the warm ones, the live ones."""

from __future__ import annotations

import asyncio

from local.lambda_runtime.template import Template
from local.lambda_runtime.worker import Worker


class WorkerPool:
    """Replaced whole on shutdown, or when the function is driven from another event loop.

    Holds the current configuration's template too (see `local.lambda_runtime.template`):
    started by the first cold start, retired with the configuration.
    """

    def __init__(self, concurrency: int) -> None:
        self.loop = asyncio.get_running_loop()
        self.slots = asyncio.Semaphore(concurrency)
        self.idle: list[Worker] = []
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

    def take_warm(self) -> Worker | None:
        """An idle environment still alive, or None: the caller then starts one cold."""
        while self.idle:
            worker = self.idle.pop()
            if worker.process.returncode is None:
                return worker
            # Died while idle (killed from outside, out of memory): Lambda would just start another.
            self.workers.discard(worker)
        return None

    def retire_all(self) -> None:
        """The configuration changed: idle environments go now, busy ones when their invocation ends."""
        if self.closed:
            return
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
        for worker in list(self.workers):
            worker.kill("shutdown")
        self.idle.clear()
        for template in list(self.templates):
            template.close()
        self.template = None
