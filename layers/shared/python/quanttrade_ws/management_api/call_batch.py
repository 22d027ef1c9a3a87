"""The calls of one `post_many` (or one single call), pumped through the pool to their outcomes.

No task or future per request: when a response arrives, the next request goes
out on the same connection from inside the read callback.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from quanttrade_ws.management_api.http_connection import HttpConnection

if TYPE_CHECKING:
    import asyncio

    from quanttrade_ws.management_api.connection_pool import ConnectionPool
    from quanttrade_ws.management_api.retry import RetryPolicy

PENDING, OK, GONE, FAILED = 0, 1, 2, 3
THROTTLE_ERROR_TYPES = (b"limitexceeded", b"throttl", b"toomanyrequests")


class Call:
    """One Management API call through its attempts."""

    __slots__ = (
        "attempts",
        "body",
        "connection_id",
        "error",
        "follower",
        "method",
        "outcome",
        "request",
        "stale_retried",
        "status",
        "throttles",
    )

    def __init__(self, method: str, connection_id: str, request: bytes) -> None:
        self.method = method
        self.connection_id = connection_id
        self.request = request  # signed once: retries within a batch stay far inside SigV4's 5 minute window
        self.follower: Call | None = None  # the next post to the same connection, sent only after this one
        self.attempts = 0
        self.throttles = 0
        self.stale_retried = False
        self.outcome = PENDING
        self.status: int | None = None
        self.body = b""
        self.error = ""


class CallBatch:
    """Calls pumped through the pool with at most `pool.size` requests in flight, each to one outcome.

    `timeout` bounds each request; `retry` decides what fails for good; `deadline`
    (on `clock`; None for none) is when every call must be settled.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        pool: ConnectionPool,
        calls: list[Call],
        retry: RetryPolicy,
        timeout: float,
        clock: Callable[[], float],
        deadline: float | None,
    ) -> None:
        self.loop = loop
        self.pool = pool
        self.calls = calls
        self.retry = retry
        self.timeout = timeout
        self.clock = clock
        self.deadline = deadline
        self.abandoned = False
        # Posts to one connection go out one after another, so a client sees them in the order given
        # even when an earlier one is throttled and retried; different connections proceed in parallel.
        self.queue: deque[Call] = deque()
        last: dict[str, Call] = {}
        for call in calls:
            previous = last.get(call.connection_id)
            if previous is None:
                self.queue.append(call)
            else:
                previous.follower = call
            last[call.connection_id] = call
        self.unfinished = len(calls)
        self.done: asyncio.Future[None] = loop.create_future()
        self.busy: set[HttpConnection] = set()
        self.timers: set[asyncio.TimerHandle] = set()
        self.throttle_retries = 0
        self.last_event = time.monotonic()
        self.watchdog: asyncio.TimerHandle | None = None
        self.opening: set[asyncio.Task[None]] = set()  # the loop keeps only weak references to tasks

    def pump(self) -> None:
        if self.abandoned:
            return
        pool = self.pool
        queue = self.queue
        while queue:
            conn = pool.take_idle()
            if conn is not None:
                self.dispatch(conn, queue.popleft())
            elif pool.live < pool.size:
                call = queue.popleft()
                call.attempts += 1
                pool.live += 1
                task = self.loop.create_task(self._open_and_send(call))
                self.opening.add(task)
                task.add_done_callback(self.opening.discard)
            else:
                return

    async def _open_and_send(self, call: Call) -> None:
        conn = HttpConnection(self.pool)
        try:
            await self.pool.open(conn)
        except BaseException as exc:
            conn.abort()  # frees the slot, whether the attempt failed or the batch was abandoned
            if not isinstance(exc, Exception):
                raise
            # DNS, refusal, TLS and timeouts alike: the call retries after a backoff.
            self.retry_or_fail(call, None, f"connect failed: {exc!r}", throttled=False)
            self.pump()
            return
        self.last_event = time.monotonic()
        call.attempts -= 1  # dispatch counts the attempt
        self.dispatch(conn, call)

    def dispatch(self, conn: HttpConnection, call: Call) -> None:
        call.attempts += 1
        self.busy.add(conn)
        conn.send(self, call)

    def on_response(
        self, conn: HttpConnection, call: Call, status: int, body: bytes, error_type: bytes, reusable: bool
    ) -> None:
        self.last_event = time.monotonic()
        self.busy.discard(conn)
        if 200 <= status < 300:
            self.finish(call, OK, status, body, "")
        elif status == 410:
            self.finish(call, GONE, status, body, "")
        else:
            reason = f"HTTP {status} {error_type.decode(errors='replace')}".strip()
            throttled = status == 429 or (status == 400 and any(t in error_type.lower() for t in THROTTLE_ERROR_TYPES))
            if throttled or status >= 500:
                self.retry_or_fail(call, status, reason, throttled=throttled)
            else:
                # 400/403/413...: the same request would fail the same way.
                self.finish(call, FAILED, status, body, reason)
        if reusable:
            if self.queue:
                self.dispatch(conn, self.queue.popleft())
            else:
                self.pool.put_idle(conn)
        elif self.queue:
            self.pump()

    def on_connection_lost(self, conn: HttpConnection, call: Call, reason: str) -> None:
        self.last_event = time.monotonic()
        self.busy.discard(conn)
        if not conn.received and conn.served > 0 and not call.stale_retried:
            # A reused keep-alive connection the server had already closed: the request most likely never
            # reached it, so it goes again, first in line, once, without spending an attempt.
            call.stale_retried = True
            call.attempts -= 1
            self.queue.appendleft(call)
        else:
            self.retry_or_fail(call, None, reason, throttled=False)
        self.pump()

    def on_transport_error(self, call: Call, reason: str) -> None:
        self.retry_or_fail(call, None, reason, throttled=False)
        self.pump()

    def retry_or_fail(self, call: Call, status: int | None, reason: str, throttled: bool) -> None:
        self.last_event = time.monotonic()
        if throttled:
            call.throttles += 1
        delay = self.retry.delay(call.attempts, call.throttles, throttled, self.clock(), self.deadline)
        if delay is None:
            if self.deadline is not None and call.attempts - call.throttles < self.retry.max_attempts:
                reason = f"{reason}; no retry before the invocation's deadline"
            self.finish(call, FAILED, status, b"", reason)
            return
        if throttled:
            self.throttle_retries += 1
        handle: asyncio.TimerHandle | None = None

        def requeue() -> None:
            self.last_event = time.monotonic()
            self.timers.discard(handle)  # type: ignore[arg-type]
            self.queue.append(call)
            self.pump()

        handle = self.loop.call_later(delay, requeue)
        self.timers.add(handle)

    def finish(self, call: Call, outcome: int, status: int | None, body: bytes, error: str) -> None:
        """Settle a call; its follower becomes sendable (callers pump), or is gone too if the connection is."""
        call.outcome = outcome
        call.status = status
        call.body = body
        call.error = error
        self.unfinished -= 1
        follower = call.follower
        while follower is not None and outcome == GONE:
            follower.outcome = GONE
            follower.status = status
            self.unfinished -= 1
            follower = follower.follower
        if follower is not None:
            self.queue.append(follower)
        if self.unfinished == 0 and not self.done.done():
            self.done.set_result(None)

    def check_timeouts(self) -> None:
        limit = time.monotonic() - self.timeout
        for conn in [c for c in self.busy if c.sent_at < limit]:
            call = conn.call
            self.busy.discard(conn)
            # The response may still come; the connection can't be reused without reading it, so drop it.
            conn.abort()
            if call is not None:
                self.retry_or_fail(call, None, f"no response within {self.timeout}s", throttled=False)
        self.pump()

    def start_watchdog(self) -> None:
        """Enforce per-request timeouts with one timer per batch rather than one per request."""
        timeout = self.timeout
        tick = min(timeout / 4, 0.5)
        # Healthy batches hear something (an answer, a timeout, a connect result, a retry timer) at least this
        # often; silence beyond it can only be a bug stranding a call, and a Lambda must not hang on one.
        stall_limit = 2 * (timeout + self.retry.backoff_cap) + 1.0

        def watch() -> None:
            if self.past_deadline():
                # Posts still unanswered now could only end after the invocation: failed, they are redelivered.
                self.abandon("no answer before the invocation's deadline")
                return
            self.check_timeouts()
            if time.monotonic() - self.last_event > stall_limit:
                self.abandon("batch stalled")
            elif not self.done.done():
                self.watchdog = self.loop.call_later(self._until_next_watch(tick), watch)

        self.watchdog = self.loop.call_later(self._until_next_watch(tick), watch)

    def _until_next_watch(self, tick: float) -> float:
        if self.deadline is None:
            return tick
        return max(0.0, min(tick, self.deadline - self.clock()))

    def past_deadline(self) -> bool:
        return self.deadline is not None and self.clock() >= self.deadline

    def stop_watchdog(self) -> None:
        if self.watchdog is not None:
            self.watchdog.cancel()

    def abandon(self, reason: str) -> None:
        self.abandoned = True  # slots freed below must not start new requests
        for task in list(self.opening):
            task.cancel()
        for conn in list(self.busy):
            conn.abort()
        self.busy.clear()
        for handle in self.timers:
            handle.cancel()
        self.timers.clear()
        for call in self.calls:
            if call.outcome == PENDING:
                self.finish(call, FAILED, None, b"", reason)
        self.queue.clear()
