"""In-memory stand-ins for the shared package's ports, for the tests and the benchmarks.

They live outside the Lambda layer: no function ships them. Each satisfies the same
interface (and, for the gateway, the same contract tests) as the real implementation.
"""

from __future__ import annotations

import json
import threading
from collections import defaultdict
from collections.abc import Sequence

from quanttrade_ws.connection_gateway import DeliveryReport, GatewayError, Post
from quanttrade_ws.queues import OutgoingMessage


class InMemoryGateway:
    """A fake gateway: records what was posted; tests mark connections gone or failing."""

    def __init__(self) -> None:
        self.sent: dict[str, list[bytes]] = {}
        self.gone: set[str] = set()
        self.failing: set[str] = set()
        self.closed: list[str] = []
        self.deadlines: list[float | None] = []
        self._lock = threading.Lock()

    def connect(self, *connection_ids: str) -> None:
        with self._lock:
            for connection_id in connection_ids:
                self.sent.setdefault(connection_id, [])
                self.gone.discard(connection_id)

    def post_many(self, posts: Sequence[Post], deadline: float | None = None) -> DeliveryReport:
        # Posting here is instant and never throttled: the deadline is only recorded, for tests to check.
        self.deadlines.append(deadline)
        report = DeliveryReport()
        for post in posts:
            try:
                (report.delivered if self.post(post.connection_id, post.data) else report.gone).append(post)
            except GatewayError:
                report.failed.append(post)
        return report

    def post(self, connection_id: str, data: bytes) -> bool:
        with self._lock:
            if connection_id in self.failing:
                raise GatewayError(f"post to {connection_id} failed")
            if connection_id in self.gone or connection_id not in self.sent:
                return False
            self.sent[connection_id].append(data)
            return True

    def close(self, connection_id: str) -> None:
        with self._lock:
            self.closed.append(connection_id)
            self.gone.add(connection_id)

    def info(self, connection_id: str) -> dict[str, object] | None:
        with self._lock:
            if connection_id in self.gone or connection_id not in self.sent:
                return None
            return {"connectedAt": "", "lastActiveAt": "", "identity": {}}

    def messages(self, connection_id: str) -> list[dict[str, object]]:
        """Everything a connection received, decoded, with `batch` messages unpacked."""
        out: list[dict[str, object]] = []
        for data in self.sent.get(connection_id, []):
            message = json.loads(data)
            if message.get("message_type") == "batch":
                out.extend(message["payload"]["messages"])
            else:
                out.append(message)
        return out


class InMemorySender:
    """The fake: keeps what was sent per queue, in order."""

    def __init__(self) -> None:
        self.sent: dict[str, list[OutgoingMessage]] = {}
        self.failing = False

    def send(self, queue_url: str, messages: list[OutgoingMessage]) -> list[OutgoingMessage]:
        if self.failing:
            return list(messages)
        self.sent.setdefault(queue_url, []).extend(messages)
        return []


class CountingMetrics:
    """Metrics kept in memory: for tests, benchmarks and the local stack's stats."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self.samples: dict[str, list[float]] = defaultdict(list)

    def add_metric(self, name: str, unit: str, value: float) -> None:
        self.totals[name] += value
        if unit == "Milliseconds":
            self.samples[name].append(value)
