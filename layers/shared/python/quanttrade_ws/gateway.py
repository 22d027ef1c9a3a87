"""The connection gateway: the one interface through which the service talks to
connected clients (API Gateway's Management API on AWS, the local gateway at home).

`ManagementApiGateway` (in management_api.py) is the real implementation; the
`InMemoryGateway` here is the fake the unit tests use. Both satisfy the same
contract tests.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class Post:
    connection_id: str
    data: bytes


@dataclass
class DeliveryReport:
    """What happened to a set of posts. Every post lands in exactly one list."""

    delivered: list[Post] = field(default_factory=list)
    gone: list[Post] = field(default_factory=list)  # 410: the connection is closed; remove what it owns
    failed: list[Post] = field(default_factory=list)  # anything else, after retries: redeliver later
    throttle_retries: int = 0  # 429 / LimitExceeded answers that were retried


class ConnectionGateway(Protocol):
    def post_many(self, posts: Sequence[Post]) -> DeliveryReport:
        """Post each message to its connection with bounded parallelism, retrying throttling."""

    def post(self, connection_id: str, data: bytes) -> bool:
        """Post one message. False when the connection is gone (410); raises on other failures."""

    def close(self, connection_id: str) -> None:
        """Close a connection (the client sees a close frame; $disconnect follows). Gone is fine."""

    def info(self, connection_id: str) -> dict[str, object] | None:
        """Connection info (connectedAt, lastActiveAt, identity), or None when gone."""


class GatewayError(Exception):
    """A post failed for a reason other than a gone connection, after retries."""


class InMemoryGateway:
    """A fake gateway: records what was posted; tests mark connections gone or failing."""

    def __init__(self) -> None:
        self.sent: dict[str, list[bytes]] = {}
        self.gone: set[str] = set()
        self.failing: set[str] = set()
        self.closed: list[str] = []
        self._lock = threading.Lock()

    def connect(self, *connection_ids: str) -> None:
        with self._lock:
            for connection_id in connection_ids:
                self.sent.setdefault(connection_id, [])
                self.gone.discard(connection_id)

    def post_many(self, posts: Sequence[Post]) -> DeliveryReport:
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
        import json

        out: list[dict[str, object]] = []
        for data in self.sent.get(connection_id, []):
            message = json.loads(data)
            if message.get("message_type") == "batch":
                out.extend(message["payload"]["messages"])
            else:
                out.append(message)
        return out
