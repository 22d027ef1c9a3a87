"""The connection gateway: the port through which the domain reaches connected clients
(post to them, close them, ask about them), whoever serves it: API Gateway's Management
API on AWS, the local API Gateway emulator at home.

`management_api.client.ManagementApiGateway` is the real implementation; the
in-memory fake the tests use (`local.fakes.InMemoryGateway`) satisfies the same
contract tests.
"""

from __future__ import annotations

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
    def post_many(self, posts: Sequence[Post], deadline: float | None = None) -> DeliveryReport:
        """Post each message to its connection with bounded parallelism, retrying throttling.

        `deadline` (on time.monotonic()'s clock) is when the caller must have its answer, the
        invocation's end less what it keeps for itself: throttled posts are retried until then,
        and what is not delivered by then is reported failed.
        """

    def post(self, connection_id: str, data: bytes) -> bool:
        """Post one message. False when the connection is gone (410); raises on other failures."""

    def close(self, connection_id: str) -> None:
        """Close a connection (the client sees a close frame; $disconnect follows). Gone is fine."""

    def info(self, connection_id: str) -> dict[str, object] | None:
        """Connection info (connectedAt, lastActiveAt, identity), or None when gone."""


class GatewayError(Exception):
    """A post failed for a reason other than a gone connection, after retries."""
